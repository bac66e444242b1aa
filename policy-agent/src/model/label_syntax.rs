//! Label keys and values as the Kubernetes API server validates them
//! (apimachinery `IsQualifiedName`, `IsValidLabelValue`): an object or a
//! selector the API would reject is reported by name, never half-read.
//! Pure; unit-tested below.

use super::Labels;

/// The longest name part of a key, and the longest value.
const NAME_MAX: usize = 63;
/// The longest prefix (a DNS subdomain) of a key.
const PREFIX_MAX: usize = 253;

/// Checks every key and value of `labels`; `at` names the field in the error.
pub fn check_labels(labels: &Labels, at: &str) -> Result<(), String> {
    for (k, v) in labels {
        check_key(k).map_err(|e| format!("{at}: {e}"))?;
        check_value(v).map_err(|e| format!("{at}[{k}]: {e}"))?;
    }
    Ok(())
}

/// A qualified name: `[prefix/]name`, the prefix a DNS subdomain of at most
/// 253 characters, the name 1-63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
pub fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if !is_dns_subdomain(p) {
            return Err(format!(
                "label key {key:?}: prefix must be a DNS subdomain (at most {PREFIX_MAX} of [a-z0-9.-], alphanumeric at both ends)"
            ));
        }
    }
    if name.is_empty() || !is_name_part(name) {
        return Err(format!(
            "label key {key:?}: name must be 1-{NAME_MAX} of [A-Za-z0-9._-], alphanumeric at both ends"
        ));
    }
    Ok(())
}

/// A label value: empty, or 1-63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
pub fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_name_part(value) {
        return Ok(());
    }
    Err(format!(
        "label value {value:?} must be at most {NAME_MAX} of [A-Za-z0-9._-], alphanumeric at both ends"
    ))
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= NAME_MAX
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
}

/// RFC 1123 subdomain: dot-separated labels of `[a-z0-9-]`, alphanumeric at
/// both ends, at most 253 characters in all.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= PREFIX_MAX
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= NAME_MAX
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_as_the_api_server_validates_them() {
        let long = |n: usize| "a".repeat(n);
        let prefix_253 = format!("{}.{}.{}.{}", long(63), long(63), long(63), long(61));
        let table: Vec<(String, bool)> = vec![
            ("app".into(), true),
            ("App_1.x-y".into(), true),
            ("kubernetes.io/metadata.name".into(), true),
            ("a.b-c/Z".into(), true),
            (long(63), true),
            (long(64), false),
            (format!("{prefix_253}/x"), true),
            (format!("{prefix_253}a/x"), false),
            ("".into(), false),
            ("-app".into(), false),
            ("app-".into(), false),
            ("a b".into(), false),
            ("/app".into(), false),
            ("Example.com/app".into(), false),
            ("example..com/app".into(), false),
            ("a/b/c".into(), false),
            ("example.com/".into(), false),
            ("é".into(), false),
        ];
        for (key, ok) in table {
            assert_eq!(check_key(&key).is_ok(), ok, "{key:?}");
        }
    }

    #[test]
    fn values_as_the_api_server_validates_them() {
        let table: Vec<(String, bool)> = vec![
            ("".into(), true),
            ("v1".into(), true),
            ("A.b_c-D".into(), true),
            ("x".repeat(63), true),
            ("x".repeat(64), false),
            ("-v".into(), false),
            ("v.".into(), false),
            ("a/b".into(), false),
            ("a b".into(), false),
        ];
        for (v, ok) in table {
            assert_eq!(check_value(&v).is_ok(), ok, "{v:?}");
        }
    }

    #[test]
    fn check_labels_names_the_field_and_the_key() {
        let l = crate::model::manifest::labels([("app", "ok"), ("tier", "bad value")]);
        let e = check_labels(&l, "metadata.labels").unwrap_err();
        assert!(e.starts_with("metadata.labels[tier]: label value \"bad value\""), "{e}");
    }
}
