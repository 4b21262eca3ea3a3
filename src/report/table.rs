//! Plain-text tables of `report`: a header and rows of cells in, aligned lines out. Each
//! column is as wide as its widest cell, header included (so a long account id or dimension
//! value widens its column instead of shifting the others); text is left-aligned, numbers
//! right-aligned.

/// How a column's cells are aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Renders `rows` under `header` (name and alignment per column), two spaces between
/// columns, no trailing spaces. A row with fewer cells than the header is padded with empty
/// ones.
pub fn render(header: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let width = |c: &str| c.chars().count();
    let mut widths: Vec<usize> = header.iter().map(|(h, _)| width(h)).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, ((_, align), w)) in header.iter().zip(&widths).enumerate() {
            let cell = cells.next().unwrap_or("");
            let pad = " ".repeat(w - width(cell));
            if i > 0 {
                out.push_str("  ");
            }
            match align {
                Align::Left => {
                    out.push_str(cell);
                    out.push_str(&pad);
                }
                Align::Right => {
                    out.push_str(&pad);
                    out.push_str(cell);
                }
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut o = line(&mut header.iter().map(|(h, _)| *h));
    for row in rows {
        o.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_widen_to_the_longest_cell_and_numbers_align_right() {
        let t = render(
            &[("value", Align::Left), ("calls", Align::Right)],
            &[
                vec![
                    "a-very-long-dimension-value-über-forty-characters".into(),
                    "7".into(),
                ],
                vec!["b".into(), "1234567".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        // Every line ends at the same column: the numbers are right-aligned.
        let ends: Vec<usize> = lines.iter().map(|l| l.chars().count()).collect();
        assert!(ends.iter().all(|e| *e == ends[0]), "{t}");
        assert!(
            lines[2].starts_with("b  ") && lines[2].ends_with("1234567"),
            "{t}"
        );
    }
}
