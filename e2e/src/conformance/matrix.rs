//! Reachability matrices (the `expect` blocks of a case): parsing the
//! expected ones out of a case file, and printing an expected matrix next to
//! the observed one with the differing cells marked. Pure: no I/O.

use std::fmt::Write as _;

use crate::pods::split_pod_name;

/// At most this many differing cells are spelled out under a diff (the
/// matrices already mark them all).
const MAX_CELL_LINES: usize = 8;

/// One expected cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// `.`: connects.
    Allow,
    /// `X`: blocked (a timeout or a reset).
    Deny,
    /// `?`: not checked (the API leaves the outcome to the implementation).
    Any,
}

impl Cell {
    fn parse(s: &str) -> Option<Cell> {
        match s {
            "." => Some(Cell::Allow),
            "X" => Some(Cell::Deny),
            "?" => Some(Cell::Any),
            _ => None,
        }
    }

    pub fn symbol(self) -> char {
        match self {
            Cell::Allow => '.',
            Cell::Deny => 'X',
            Cell::Any => '?',
        }
    }
}

/// What a probe of one cell saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Connected, and the expected server answered.
    Connected,
    /// A timeout or a reset.
    Blocked,
    /// Anything else (a wrong server answered, unreachable, a local error): never a match.
    Odd(String),
    /// Not probed: a `?` cell.
    Skipped,
    /// A pod to itself: never leaves the pod, so never probed; always `.`.
    Diagonal,
}

impl Seen {
    pub fn symbol(&self) -> char {
        match self {
            Seen::Connected => '.',
            Seen::Blocked => 'X',
            Seen::Odd(_) => 'E',
            Seen::Skipped => '?',
            Seen::Diagonal => '.',
        }
    }

    /// True if this outcome satisfies `want`.
    pub fn satisfies(&self, want: Cell) -> bool {
        matches!(
            (want, self),
            (Cell::Any, _)
                | (_, Seen::Diagonal)
                | (Cell::Allow, Seen::Connected)
                | (Cell::Deny, Seen::Blocked)
        )
    }
}

/// An expected matrix: rows are sources, columns destinations (pod names "ns/pod").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    pub cols: Vec<String>,
    pub rows: Vec<String>,
    /// `cells[r][c]`: from `rows[r]` to `cols[c]`.
    pub cells: Vec<Vec<Cell>>,
}

impl Matrix {
    /// Parses a matrix block: split on white space, the first non-empty line
    /// is the column headers, each further line a row label and one cell per
    /// column. Labels are pod names, unique per axis; a pod's cell to itself
    /// (the diagonal) must be `.` or `?`, since that traffic never leaves the pod.
    pub fn parse(text: &str) -> Result<Matrix, String> {
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let Some((_, header)) = lines.next() else {
            return Err(
                "empty matrix (want a header line of destination pods, then one row per source)".into()
            );
        };
        let cols: Vec<String> = header.split_whitespace().map(String::from).collect();
        for (i, c) in cols.iter().enumerate() {
            check_label(c).map_err(|e| format!("column {}: {e}", i + 1))?;
            if cols[..i].contains(c) {
                return Err(format!("column {c:?} appears twice"));
            }
        }
        let mut rows = Vec::new();
        let mut cells = Vec::new();
        for (n, line) in lines {
            let mut words = line.split_whitespace();
            // A non-empty line has a first word.
            let label = words.next().unwrap_or_default().to_string();
            let at = format!("line {} (row {label:?})", n + 1);
            check_label(&label).map_err(|e| format!("{at}: {e}"))?;
            if rows.contains(&label) {
                return Err(format!("{at}: row {label:?} appears twice"));
            }
            let words: Vec<&str> = words.collect();
            if words.len() != cols.len() {
                return Err(format!("{at}: {} cells, want {} (one per column)", words.len(), cols.len()));
            }
            let mut row = Vec::with_capacity(words.len());
            for (c, w) in words.iter().enumerate() {
                let cell = Cell::parse(w).ok_or_else(|| {
                    format!(
                        "{at}, column {:?}: {w:?} is not a cell (`.` connects, `X` blocked, `?` not checked)",
                        cols[c]
                    )
                })?;
                if cols[c] == label && cell == Cell::Deny {
                    return Err(format!(
                        "{at}: the diagonal cell {label} -> {label} is X, but a pod always reaches itself (use `.`)"
                    ));
                }
                row.push(cell);
            }
            rows.push(label);
            cells.push(row);
        }
        if rows.is_empty() {
            return Err("a header line but no rows".into());
        }
        Ok(Matrix { cols, rows, cells })
    }

    /// Every pod the matrix names, rows first, each once.
    pub fn pods(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for p in self.rows.iter().chain(&self.cols) {
            if !out.contains(&p.as_str()) {
                out.push(p);
            }
        }
        out
    }
}

fn check_label(label: &str) -> Result<(), String> {
    split_pod_name(label).map(drop).map_err(|e| format!("{label:?} is not a pod (NAMESPACE/NAME): {e}"))
}

/// The result of probing a matrix: `seen[r][c]` for `expect.cells[r][c]`.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub expect: &'a Matrix,
    pub seen: Vec<Vec<Seen>>,
}

impl Observed<'_> {
    /// The cells that do not satisfy the expectation: (row, column).
    pub fn mismatches(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (r, row) in self.seen.iter().enumerate() {
            for (c, seen) in row.iter().enumerate() {
                if !seen.satisfies(self.expect.cells[r][c]) {
                    out.push((r, c));
                }
            }
        }
        out
    }

    /// The expected and the observed matrix side by side, each differing
    /// observed cell in brackets, then one line per differing cell saying
    /// what was seen. Every line starts with `indent`.
    pub fn render_diff(&self, indent: &str) -> String {
        let m = self.expect;
        let bad = self.mismatches();
        let left = grid(m, |r, c| format!(" {} ", m.cells[r][c].symbol()));
        let right = grid(m, |r, c| {
            let s = self.seen[r][c].symbol();
            if bad.contains(&(r, c)) {
                format!("[{s}]")
            } else {
                format!(" {s} ")
            }
        });
        let width = left.iter().map(|l| l.chars().count()).max().unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(out, "{indent}{:<width$}    observed ([ ] differs; E: see below)", "expected");
        for (l, r) in left.iter().zip(&right) {
            let _ = writeln!(out, "{indent}{l:<width$}    {r}");
        }
        // Odd outcomes first: the matrix shows them only as E.
        let mut listed: Vec<(usize, usize)> = bad.clone();
        listed.sort_by_key(|&(r, c)| !matches!(self.seen[r][c], Seen::Odd(_)));
        let more = listed.len().saturating_sub(MAX_CELL_LINES);
        listed.truncate(MAX_CELL_LINES);
        for &(r, c) in &listed {
            let what = match &self.seen[r][c] {
                Seen::Connected => "connected".to_string(),
                Seen::Blocked => "blocked".to_string(),
                Seen::Odd(why) => why.clone(),
                Seen::Skipped | Seen::Diagonal => "not probed".to_string(),
            };
            let want = match m.cells[r][c] {
                Cell::Allow => "connect",
                Cell::Deny => "be blocked",
                Cell::Any => "anything",
            };
            let _ = writeln!(out, "{indent}{} -> {}: {what}, expected to {want}", m.rows[r], m.cols[c]);
        }
        if more > 0 {
            let _ = writeln!(out, "{indent}... and {more} more differing cell(s), marked above");
        }
        out
    }
}

/// The lines of a matrix with header and row labels; `cell(r, c)` gives each
/// 3-character cell, centred in its column.
fn grid(m: &Matrix, cell: impl Fn(usize, usize) -> String) -> Vec<String> {
    let label_w = m.rows.iter().map(|r| r.chars().count()).max().unwrap_or(0);
    let col_w: Vec<usize> = m.cols.iter().map(|c| c.chars().count().max(3)).collect();
    let mut lines = Vec::with_capacity(m.rows.len() + 1);
    let mut head = format!("{:label_w$}", "");
    for (c, w) in m.cols.iter().zip(&col_w) {
        let _ = write!(head, " {c:^w$}");
    }
    lines.push(head.trim_end().to_string());
    for (r, label) in m.rows.iter().enumerate() {
        let mut line = format!("{label:<label_w$}");
        for (c, w) in col_w.iter().enumerate() {
            let _ = write!(line, " {:^w$}", cell(r, c));
        }
        lines.push(line.trim_end().to_string());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "
          x/a x/b y/a
      x/a  .   X   ?
      x/b  .   .   X
    ";

    #[test]
    fn parses_headers_rows_and_cells() {
        let m = Matrix::parse(M).unwrap();
        assert_eq!(m.cols, ["x/a", "x/b", "y/a"]);
        assert_eq!(m.rows, ["x/a", "x/b"]);
        assert_eq!(m.cells[0], [Cell::Allow, Cell::Deny, Cell::Any]);
        assert_eq!(m.cells[1], [Cell::Allow, Cell::Allow, Cell::Deny]);
        assert_eq!(m.pods(), ["x/a", "x/b", "y/a"]);
    }

    #[test]
    fn rejects_bad_shapes_and_labels() {
        let cases = [
            ("", "empty matrix"),
            ("x/a x/b\n", "no rows"),
            ("x/a x/b\nx/a .\n", "1 cells, want 2"),
            ("x/a x/b\nx/a . . .\n", "3 cells, want 2"),
            ("x/a x/b\nx/a . x\n", "\"x\" is not a cell"),
            ("x/a x/b\nx/a . -\n", "\"-\" is not a cell"),
            ("x/a x/a\nx/a . .\n", "column \"x/a\" appears twice"),
            ("x/a x/b\nx/b . .\nx/b . .\n", "row \"x/b\" appears twice"),
            ("x/a xb\nx/a . .\n", "\"xb\" is not a pod"),
            ("x/a x/b\nX/a . .\n", "\"X/a\" is not a pod"),
            ("x/a x/b\nx/a X .\n", "diagonal"),
        ];
        for (text, want) in cases {
            let e = Matrix::parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        // The line number points into the block.
        let e = Matrix::parse("x/a x/b\nx/a . .\n\nx/b . X X\n").unwrap_err();
        assert!(e.starts_with("line 4 (row \"x/b\")"), "{e}");
    }

    #[test]
    fn seen_satisfies() {
        assert!(Seen::Connected.satisfies(Cell::Allow));
        assert!(Seen::Blocked.satisfies(Cell::Deny));
        assert!(!Seen::Blocked.satisfies(Cell::Allow));
        assert!(!Seen::Connected.satisfies(Cell::Deny));
        assert!(!Seen::Odd("unreachable".into()).satisfies(Cell::Allow));
        assert!(!Seen::Odd("unreachable".into()).satisfies(Cell::Deny));
        assert!(Seen::Odd("whatever".into()).satisfies(Cell::Any));
    }

    #[test]
    fn side_by_side_marks_the_differing_cells() {
        let m = Matrix::parse(M).unwrap();
        let seen = vec![
            vec![Seen::Diagonal, Seen::Connected, Seen::Skipped],
            vec![Seen::Connected, Seen::Diagonal, Seen::Odd("connected, answered by \"y/b\"".into())],
        ];
        let o = Observed { expect: &m, seen };
        assert_eq!(o.mismatches(), [(0, 1), (1, 2)]);
        let got = o.render_diff("  ");
        let want = "  expected           observed ([ ] differs; E: see below)
      x/a x/b y/a        x/a x/b y/a
  x/a  .   X   ?     x/a  .  [.]  ?
  x/b  .   .   X     x/b  .   .  [E]
  x/b -> y/a: connected, answered by \"y/b\", expected to be blocked
  x/a -> x/b: connected, expected to be blocked
";
        assert_eq!(got, want, "\n{got}");
    }

    #[test]
    fn long_diffs_list_odd_cells_first_and_stop() {
        let m = Matrix::parse(&format!(
            "{}\n{}",
            "x/a x/b x/c y/a",
            ["x/a . X X X", "x/b X . X X", "x/c X X . X", "y/a X X X .",].join("\n")
        ))
        .unwrap();
        let mut seen = vec![vec![Seen::Connected; 4]; 4];
        for (i, row) in seen.iter_mut().enumerate() {
            row[i] = Seen::Diagonal;
        }
        seen[3][2] = Seen::Odd("unreachable".into());
        let got = Observed { expect: &m, seen }.render_diff("");
        let lines: Vec<&str> = got.lines().skip(6).collect();
        assert_eq!(lines.len(), MAX_CELL_LINES + 1, "{got}");
        assert_eq!(lines[0], "y/a -> x/c: unreachable, expected to be blocked");
        assert_eq!(lines[MAX_CELL_LINES], "... and 4 more differing cell(s), marked above");
    }

    #[test]
    fn wide_labels_keep_cells_under_their_column() {
        let m = Matrix::parse("x/web x/a\nx/web . X\n").unwrap();
        let lines = grid(&m, |r, c| format!(" {} ", m.cells[r][c].symbol()));
        assert_eq!(lines, ["      x/web x/a", "x/web   .    X"]);
    }
}
