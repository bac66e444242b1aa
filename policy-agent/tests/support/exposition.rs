//! A Prometheus text exposition parser for tests: strict enough to catch a
//! malformed line of what the agent's `/metrics` serves. Included by path
//! (`#[path]`) in the agent's metrics tests and the e2e metrics test.

/// One sample of a scrape: name, labels in order, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses Prometheus text (what `/metrics` serves) strictly enough to
/// catch a malformed line: `# HELP`/`# TYPE` comments, and samples
/// `name{k="v",...} value` with escaped label values. For tests and tools.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        if let Some(c) = line.strip_prefix('#') {
            let mut w = c.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("HELP"), Some(n), _) if valid_name(n) => {}
                (Some("TYPE"), Some(n), Some("counter" | "gauge" | "histogram" | "summary" | "untyped"))
                    if valid_name(n) && w.next().is_none() => {}
                _ => return Err(bad("a comment that is neither HELP nor TYPE")),
            }
            continue;
        }
        let end = line.find(['{', ' ']).ok_or_else(|| bad("no value"))?;
        let name = &line[..end];
        if !valid_name(name) {
            return Err(bad("invalid metric name"));
        }
        let mut rest = &line[end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let (k, r) = rest.split_once("=\"").ok_or_else(|| bad("a label without =\""))?;
                if !valid_name(k) {
                    return Err(bad("invalid label name"));
                }
                let (v, r) = unescape(r).ok_or_else(|| bad("an unterminated label value"))?;
                labels.push((k.to_string(), v));
                rest = r.strip_prefix(',').unwrap_or(r);
            }
        }
        let value = rest.strip_prefix(' ').ok_or_else(|| bad("no space before the value"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| bad("the value is not a number"))?,
        };
        out.push(Sample { name: name.into(), labels, value });
    }
    Ok(out)
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

/// A label value up to its closing quote, unescaped, and what follows it.
fn unescape(s: &str) -> Option<(String, &str)> {
    let mut v = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((v, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => v.push('\n'),
                e @ ('\\' | '"') => v.push(e),
                _ => return None,
            },
            c => v.push(c),
        }
    }
    None
}

/// The value of the sample `name` whose labels include every one of `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_rejects_malformed_lines() {
        for bad in [
            "weft_x",
            "weft_x{a=\"1\" 2",
            "weft_x{a=1} 2",
            "weft_x 2x",
            "9x 1",
            "weft_x{a=\"\\q\"} 1",
            "# TYPE weft_x lines",
            "# comment",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        let s = parse("a{b=\"c,\\\"d\\\"\",e=\"\"} +Inf\n# HELP a x y\n# TYPE a gauge\nb 1.5e3").unwrap();
        assert_eq!(s[0].labels, [("b".to_string(), "c,\"d\"".to_string()), ("e".into(), String::new())]);
        assert_eq!((s[0].value, s[1].value), (f64::INFINITY, 1500.0));
    }
}
