//! A mechanical stand-in for the LLM judge, for when none is at hand: `edu-proxy-v1`, an
//! additive 0–5 score of a Python file on visible signs of the rubric's criteria (a point each).
//!
//! 1. a module docstring says what the file is for;
//! 2. most functions and classes (at least half, and at least one) have a docstring;
//! 3. explanation is a real part of the text: comment and docstring lines are ≥ 15% of the
//!    non-blank lines;
//! 4. functions are short enough to read: on average at most 30 lines from one `def` to the next;
//! 5. it shows usage: doctest examples (`>>>`) or a `__main__` demonstration.
//!
//! What this means: a classifier trained on these labels learns to imitate five heuristics
//! through a model's embeddings, not what a strong judge means by educational value. It
//! exercises the whole flow (labels → embeddings → cross-validated heads → the prepare stage)
//! and shows how well embeddings carry such signals; the phi-1 result needs a real judge.

/// The version written with proxy labels.
pub const VERSION: &str = "edu-proxy-v1";

/// `edu-proxy-v1` of a Python source text, 0–5.
pub fn score(src: &str) -> u8 {
    let lines: Vec<&str> = src.lines().collect();
    let nonblank: Vec<&str> = lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()).collect();
    if nonblank.is_empty() {
        return 0;
    }
    let is_string_start = |l: &str| l.starts_with("\"\"\"") || l.starts_with("'''") || l.starts_with("r\"\"\"");
    // The module docstring: the first statement, after comments and a shebang.
    let first = nonblank.iter().find(|l| !l.starts_with('#'));
    let module_doc = first.is_some_and(|l| is_string_start(l));
    // Definitions, and whether the next non-blank line is a docstring.
    let mut defs = 0usize;
    let mut documented = 0usize;
    let mut def_lines = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        if t.starts_with("def ") || t.starts_with("async def ") || t.starts_with("class ") {
            defs += 1;
            def_lines.push(i);
            // The signature may run over several lines: the docstring follows the line ending in ':'.
            let body = lines[i..].iter().position(|l| l.trim_end().ends_with(':')).map(|k| i + k + 1);
            if let Some(next) = body.and_then(|b| lines[b.min(lines.len())..].iter().map(|l| l.trim()).find(|l| !l.is_empty())) {
                if is_string_start(next) || next.starts_with('"') || next.starts_with('\'') {
                    documented += 1;
                }
            }
        }
    }
    // Comment lines plus the lines inside triple-quoted strings.
    let mut explain = 0usize;
    let mut in_string = false;
    for l in &nonblank {
        let quotes = l.matches("\"\"\"").count() + l.matches("'''").count();
        if in_string || l.starts_with('#') || quotes > 0 {
            explain += 1;
        }
        if quotes % 2 == 1 {
            in_string = !in_string;
        }
    }
    let mean_def = if def_lines.is_empty() {
        0.0
    } else {
        let spans: Vec<usize> = def_lines.windows(2).map(|w| w[1] - w[0]).chain(std::iter::once(lines.len() - def_lines[def_lines.len() - 1])).collect();
        spans.iter().sum::<usize>() as f64 / spans.len() as f64
    };
    let usage = src.contains(">>> ") || src.contains("if __name__ == \"__main__\"") || src.contains("if __name__ == '__main__'");
    u8::from(module_doc)
        + u8::from(defs > 0 && documented * 2 >= defs)
        + u8::from(explain as f64 >= 0.15 * nonblank.len() as f64)
        + u8::from(defs > 0 && mean_def <= 30.0)
        + u8::from(usage)
}

#[cfg(test)]
mod tests {
    use super::score;

    #[test]
    fn each_criterion_is_a_point() {
        let bare = "import os\nx = 1\ny = 2\n";
        assert_eq!(score(bare), 0);
        assert_eq!(score(""), 0);
        let full = "#!/usr/bin/env python3\n\"\"\"Greatest common divisors.\"\"\"\n\n\ndef gcd(a, b):\n    \"\"\"The gcd of a and b.\n\n    >>> gcd(12, 18)\n    6\n    \"\"\"\n    # Euclid: the remainder shrinks every step.\n    while b:\n        a, b = b, a % b\n    return a\n";
        assert_eq!(score(full), 5);
        // No module docstring, no examples: 3.
        let part = full.replace("\"\"\"Greatest common divisors.\"\"\"\n", "").replace("    >>> gcd(12, 18)\n    6\n", "");
        assert_eq!(score(&part), 3);
        // A long undocumented function: only the module docstring and the __main__ demo.
        let long = format!("\"\"\"Tool.\"\"\"\ndef f(x):\n{}\nif __name__ == \"__main__\":\n    f(1)\n", "    x += 1\n".repeat(60));
        assert_eq!(score(&long), 2);
    }
}
