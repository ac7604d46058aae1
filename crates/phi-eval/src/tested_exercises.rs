//! Exercises that carry their own tests, for preferences that need no human: a top-level
//! function whose docstring holds doctest examples is an exercise (prompt = signature +
//! docstring, response = body, as [`phi_data::exercises`] splits it) and its examples are the
//! tests. A body is judged by running its whole module with that body in a
//! [`phi_sandbox::Sandbox`] and the docstring's examples against it; [`mutants`] of the
//! reference body (an off-by-one, a flipped comparison, a dropped branch, …) that fail make the
//! rejected side of a preference pair whose chosen side is the reference.
//!
//! ```no_run
//! use phi_eval::tested_exercises::{extract, mutants};
//! use phi_sandbox::{Limits, Sandbox};
//!
//! let source = std::fs::read_to_string("/usr/lib/python3.12/statistics.py").unwrap();
//! let sandbox = Sandbox::new(Limits::default())?;
//! let mut pairs = Vec::new(); // (prompt, chosen, rejected)
//! for ex in extract(&source, 12) {
//!     let passes = |body: &str| ex.passes(body, &sandbox).unwrap_or(false);
//!     if passes(&ex.response) {
//!         let failing = mutants(&ex.response).into_iter().filter(|(_, m)| !passes(m));
//!         pairs.extend(failing.map(|(_kind, m)| (ex.prompt.clone(), ex.response.clone(), m)));
//!     }
//! }
//! assert!(pairs.iter().all(|(_, chosen, rejected)| chosen != rejected));
//! # Ok::<(), phi_eval::EvalError>(())
//! ```

use phi_sandbox::Sandbox;

/// A function with doctest examples, and the module around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestedExercise {
    pub name: String,
    /// `def …:` and the docstring.
    pub prompt: String,
    /// The reference body.
    pub response: String,
    /// The module before and after the function.
    before: String,
    after: String,
}

/// The top-level functions of `source` with a docstring holding `>>>` examples and a body of
/// at most `max_body_lines` lines.
pub fn extract(source: &str, max_body_lines: usize) -> Vec<TestedExercise> {
    let mut out = Vec::new();
    let mut from = 0;
    for ex in phi_data::exercises::extract(source, max_body_lines) {
        if !ex.prompt.starts_with("def ") || !ex.prompt.contains(">>>") {
            continue;
        }
        let Some(at) = source[from..].find(&ex.prompt).map(|i| from + i) else { continue };
        let end = at + ex.prompt.len();
        if !source[end..].starts_with(&ex.response) {
            continue;
        }
        let name: String = ex.prompt[4..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        from = end + ex.response.len();
        out.push(TestedExercise { name, before: source[..at].to_string(), after: source[from..].to_string(), prompt: ex.prompt, response: ex.response });
    }
    out
}

impl TestedExercise {
    /// The module with `body` as the function's body, then its docstring's examples run
    /// against that function: it runs to its end when every example passes and raises
    /// otherwise (judged by the witness, [`phi_sandbox::Sandbox::run_python_to_end`]).
    ///
    /// Only the body is used: `body` is cut at its first line indented no deeper than the
    /// `def` (module-level code after it could otherwise rebind the name under test). The
    /// function is taken right after its definition and put back under its name after the rest
    /// of the module, so that a C accelerator imported later (`from _heapq import *`) answers
    /// neither the examples nor recursive calls; `__name__` is not `"__main__"`, so the module's
    /// own script part does not run. The examples run with doctest's default options; doctest's
    /// restoring of the tracer it found (always none: the witness refuses tracers) is skipped,
    /// since the witness refuses `sys.settrace` outright.
    pub fn program(&self, body: &str) -> String {
        let name = &self.name;
        let body = function_body(body);
        format!(
            "{before}{prompt}{body}\n_phi_under_test = {name}\n__name__ = 'exercise'\n{after}\n\
             import doctest as _phi_doctest, sys as _phi_sys\n\
             class _PhiSys:\n    \
                 __getattr__ = lambda self, n: getattr(_phi_sys, n)\n    \
                 __setattr__ = lambda self, n, v: setattr(_phi_sys, n, v)\n    \
                 settrace = staticmethod(lambda f: None)\n\
             _phi_doctest.sys = _PhiSys()\n\
             globals()[{name:?}] = _phi_under_test\n\
             _phi_globs = dict(globals())\n\
             _phi_runner = _phi_doctest.DocTestRunner()\n\
             for _phi_test in _phi_doctest.DocTestFinder(recurse=False).find(_phi_under_test, {name:?}, globs=_phi_globs):\n    \
                 _phi_runner.run(_phi_test, out=lambda s: None)\n\
             _phi_result = _phi_runner.summarize(verbose=False)\n\
             if not _phi_result.attempted or _phi_result.failed:\n    \
                 raise AssertionError('%d of %d examples failed' % (_phi_result.failed, _phi_result.attempted))\n",
            before = self.before,
            prompt = self.prompt,
            after = self.after,
        )
    }

    /// The exercise as a HumanEval-style problem (prompt, reference body; judged with
    /// [`TestedExercise::program`], not with a `check` function), for
    /// [`crate::humaneval::generate_completions`].
    pub fn problem(&self) -> crate::humaneval::Problem {
        crate::humaneval::Problem {
            task_id: self.name.clone(),
            prompt: self.prompt.clone(),
            canonical_solution: self.response.clone(),
            test: String::new(),
            entry_point: self.name.clone(),
        }
    }

    /// Whether `body` passes the examples, run in a fresh `sandbox`.
    pub fn passes(&self, body: &str, sandbox: &Sandbox) -> crate::Result<bool> {
        crate::humaneval::run_program(&self.program(body), sandbox).map(|o| o == crate::humaneval::Outcome::Passed)
    }
}

/// `completion` up to its first non-blank line that is not indented (the end of a top-level
/// function's body).
pub fn function_body(completion: &str) -> &str {
    let mut at = 0;
    for line in completion.split_inclusive('\n') {
        if !line.trim().is_empty() && !line.starts_with([' ', '\t']) {
            return &completion[..at];
        }
        at += line.len();
    }
    completion
}

/// Bodies that differ from `body` by one small, plausible bug, each with its kind: an integer
/// literal off by one, a comparison flipped, an `if` never taken, an `and`/`or` swapped, a
/// boolean return negated — one mutant per kind and line (the line's first site), in line
/// order. Comments and string literals are left alone (lines inside triple-quoted strings are
/// skipped whole).
pub fn mutants(body: &str) -> Vec<(&'static str, String)> {
    let lines: Vec<&str> = body.split_inclusive('\n').collect();
    let mut out: Vec<(&'static str, String)> = Vec::new();
    let kinds: [(&'static str, fn(&str) -> Option<String>); 5] = [
        ("off_by_one", off_by_one),
        ("flipped_comparison", flip_comparison),
        ("dropped_branch", drop_branch),
        ("swapped_bool_op", swap_bool_op),
        ("negated_return", negate_return),
    ];
    for (kind, mutate) in kinds {
        let mut in_string = false;
        for (i, line) in lines.iter().enumerate() {
            if line.matches("\"\"\"").count() % 2 == 1 || line.matches("'''").count() % 2 == 1 {
                in_string = !in_string;
                continue;
            }
            if in_string {
                continue;
            }
            if let Some(changed) = mutate(line) {
                let mut m: String = lines[..i].concat();
                m.push_str(&changed);
                m.push_str(&lines[i + 1..].concat());
                if m != body && !out.iter().any(|(_, o)| *o == m) {
                    out.push((kind, m));
                }
            }
        }
    }
    out
}

/// The code part of `line` (before a `#` comment) split into code and string-literal spans:
/// `(start, end, is_code)` byte ranges.
fn code_spans(line: &str) -> Vec<(usize, usize, bool)> {
    let b = line.as_bytes();
    let (mut spans, mut start, mut quote) = (Vec::new(), 0, None::<u8>);
    let mut i = 0;
    while i < b.len() {
        match (quote, b[i]) {
            (None, b'#') => break,
            (None, q @ (b'"' | b'\'')) => {
                spans.push((start, i, true));
                start = i;
                quote = Some(q);
            }
            (Some(_), b'\\') => i += 1,
            (Some(q), c) if c == q => {
                spans.push((start, i + 1, false));
                start = i + 1;
                quote = None;
            }
            _ => {}
        }
        i += 1;
    }
    spans.push((start, i.min(b.len()), quote.is_none()));
    spans
}

/// Replaces the first match of `find` in the code of `line` (not in strings or comments) by
/// what `replace` makes of it.
fn replace_in_code(line: &str, find: impl Fn(&str) -> Option<(usize, usize, String)>) -> Option<String> {
    for (s, e, code) in code_spans(line) {
        if !code {
            continue;
        }
        if let Some((a, b, with)) = find(&line[s..e]) {
            return Some(format!("{}{}{}", &line[..s + a], with, &line[s + b..]));
        }
    }
    None
}

fn off_by_one(line: &str) -> Option<String> {
    replace_in_code(line, |code| {
        let b = code.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let starts = b[i].is_ascii_digit() && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b'.'));
            if starts {
                let mut j = i;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                let is_plain_int = j >= b.len() || !(b[j] == b'.' || b[j].is_ascii_alphabetic() || b[j] == b'_');
                if is_plain_int && let Ok(n) = code[i..j].parse::<u64>() {
                    return Some((i, j, (n + 1).to_string()));
                }
                i = j;
            }
            i += 1;
        }
        None
    })
}

fn flip_comparison(line: &str) -> Option<String> {
    replace_in_code(line, |code| {
        // Longest operators first, so that `<=` is not read as `<`.
        for (op, with) in [("<=", "<"), (">=", ">"), ("==", "!="), ("!=", "=="), (" < ", " <= "), (" > ", " >= ")] {
            // `<<=` and `>>=` are shift assignments, not comparisons.
            let found = code.match_indices(op).map(|(a, _)| a).find(|&a| !(op.len() == 2 && a > 0 && code.as_bytes()[a - 1] == op.as_bytes()[0] && op.as_bytes()[0] != b'='));
            if let Some(a) = found {
                return Some((a, a + op.len(), with.to_string()));
            }
        }
        None
    })
}

fn drop_branch(line: &str) -> Option<String> {
    // The code before any comment.
    let code = &line[..code_spans(line).last().map_or(line.len(), |s| s.1)];
    let t = code.trim_start();
    let indent = &line[..line.len() - line.trim_start().len()];
    let rest = t.strip_prefix("if ").or_else(|| t.strip_prefix("elif "))?;
    let keyword = if t.starts_with("if ") { "if" } else { "elif" };
    let colon = rest.trim_end().strip_suffix(':')?;
    (!colon.is_empty()).then(|| format!("{indent}{keyword} False:{}", if line.ends_with('\n') { "\n" } else { "" }))
}

fn swap_bool_op(line: &str) -> Option<String> {
    replace_in_code(line, |code| {
        let (a, op) = [" and ", " or "].iter().filter_map(|op| code.find(op).map(|a| (a, *op))).min()?;
        Some((a, a + op.len(), if op == " and " { " or ".into() } else { " and ".into() }))
    })
}

fn negate_return(line: &str) -> Option<String> {
    let t = line.trim();
    let with = match t {
        "return True" => "return False",
        "return False" => "return True",
        _ => return None,
    };
    Some(line.replacen(t, with, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "import math\n\ndef clamp(x, lo, hi):\n    \"\"\"Clamp.\n\n    >>> clamp(5, 0, 3)\n    3\n    \"\"\"\n    if x > hi:  # too big\n        return hi\n    return max(x, lo + 0)\n\ndef nodoc(x):\n    \"\"\"No examples.\"\"\"\n    return x\n\nif __name__ == '__main__':\n    raise SystemExit('the script part ran')\n";

    #[test]
    fn only_top_level_functions_with_examples_and_the_module_around_them() {
        let ex = extract(SOURCE, 12);
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].name, "clamp");
        assert!(ex[0].response.starts_with("    if x > hi:"));
        let program = ex[0].program(&ex[0].response);
        assert!(program.starts_with("import math\n\ndef clamp("));
        assert!(program.contains("_phi_under_test = clamp\n__name__ = 'exercise'\n\ndef nodoc"));
    }

    #[test]
    fn mutants_change_code_not_comments_or_strings() {
        let body = "    if x > hi:  # 1 < 2\n        return s[1] + 'a < b'\n    return x == 2 and ok\n";
        let m = mutants(body);
        let get = |k: &str| m.iter().find(|(kind, _)| *kind == k).map(|(_, b)| b.as_str()).unwrap_or("");
        assert_eq!(get("off_by_one"), "    if x > hi:  # 1 < 2\n        return s[2] + 'a < b'\n    return x == 2 and ok\n");
        assert_eq!(get("flipped_comparison"), "    if x >= hi:  # 1 < 2\n        return s[1] + 'a < b'\n    return x == 2 and ok\n");
        assert_eq!(get("dropped_branch"), "    if False:\n        return s[1] + 'a < b'\n    return x == 2 and ok\n");
        assert_eq!(get("swapped_bool_op"), "    if x > hi:  # 1 < 2\n        return s[1] + 'a < b'\n    return x == 2 or ok\n");
        assert!(m.iter().all(|(_, b)| b != body));
        // One per kind and line: the third line's `2` is off by one too (the comment's are not).
        assert_eq!(m.iter().filter(|(k, _)| *k == "off_by_one").count(), 2);
        assert!(mutants("    return True\n").iter().any(|(k, b)| *k == "negated_return" && b == "    return False\n"));
        // Floats and names with digits are not integers; shift assignments are not comparisons.
        assert_eq!(off_by_one("x = a1 + 2.5\n"), None);
        assert_eq!(flip_comparison("    x <<= y >= z\n").as_deref(), Some("    x <<= y > z\n"));
        assert_eq!(function_body("    return 1\n\nclamp = max\n    x\n"), "    return 1\n\n");
    }

    #[test]
    fn the_reference_passes_a_mutant_fails_and_the_script_part_never_runs() {
        let sandbox = Sandbox::new(phi_sandbox::Limits::default()).expect("this machine must be able to isolate (Landlock, user namespaces)");
        let ex = &extract(SOURCE, 12)[0];
        let passes = |ex: &TestedExercise, body: &str| ex.passes(body, &sandbox).map_err(|e| e.to_string());
        assert_eq!(passes(ex, &ex.response), Ok(true));
        assert_eq!(passes(ex, "    return x\n"), Ok(false));
        let (_, flipped) = mutants(&ex.response).into_iter().find(|(k, _)| *k == "dropped_branch").unwrap();
        assert_eq!(passes(ex, &flipped), Ok(false));
        // A C accelerator imported after the function does not stand in for it, and a completion
        // that rebinds the name at module level is cut before that.
        let shadowed = TestedExercise { after: "clamp = lambda x, lo, hi: 3\n".into(), ..ex.clone() };
        assert_eq!(passes(&shadowed, "    return x\n"), Ok(false));
        assert_eq!(passes(ex, "    return x\nclamp = lambda x, lo, hi: 3\n"), Ok(false));
        // Ending the program before the examples have run is not passing them.
        for early in ["    import sys\n    sys.exit(0)\n", "    import os\n    os._exit(0)\n", "    raise SystemExit(0)\n"] {
            assert_eq!(passes(ex, early), Ok(false), "{early}");
        }
        // No examples attempted is a failure, not a pass.
        let none = TestedExercise { prompt: "def clamp(x, lo, hi):\n    \"\"\"No examples.\"\"\"\n".into(), ..ex.clone() };
        assert_eq!(passes(&none, &ex.response), Ok(false));
    }
}
