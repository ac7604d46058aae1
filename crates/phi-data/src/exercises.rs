//! phi-1's "exercises" in miniature: Python functions that have a docstring, split into the
//! prompt (signature + docstring) and the response (the body).
//!
//! Indentation-based, for well-formatted source such as the standard library: a `def` line
//! ending in `:`, a docstring opening on the next line, and the body up to the first line
//! indented no deeper than the `def`.

/// One exercise: what the model sees and what it must write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exercise {
    pub prompt: String,
    pub response: String,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Exercises in `source`, in order. Bodies longer than `max_body_lines` are skipped.
pub fn extract(source: &str, max_body_lines: usize) -> Vec<Exercise> {
    let lines: Vec<&str> = source.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if !(trimmed.starts_with("def ") && trimmed.trim_end().ends_with(':')) {
            i += 1;
            continue;
        }
        let base = indent(line);
        let Some(doc_line) = lines.get(i + 1) else { break };
        let doc = doc_line.trim_start();
        let quote = if doc.starts_with("\"\"\"") { "\"\"\"" } else if doc.starts_with("'''") { "'''" } else { "" };
        if quote.is_empty() || indent(doc_line) <= base {
            i += 1;
            continue;
        }
        // The docstring ends on the line holding the closing quotes.
        let mut end = i + 1;
        let single_line = doc.len() >= 6 && doc[3..].contains(quote);
        if !single_line {
            end += 1;
            while end < lines.len() && !lines[end].contains(quote) {
                end += 1;
            }
        }
        if end >= lines.len() {
            break;
        }
        let mut body_end = end + 1;
        while body_end < lines.len() && (lines[body_end].trim().is_empty() || indent(lines[body_end]) > base) {
            body_end += 1;
        }
        // Trailing blank lines belong to no one.
        while body_end > end + 1 && lines[body_end - 1].trim().is_empty() {
            body_end -= 1;
        }
        let body = &lines[end + 1..body_end];
        if !body.is_empty() && body.len() <= max_body_lines {
            out.push(Exercise {
                prompt: lines[i..=end].join("\n") + "\n",
                response: body.join("\n") + "\n",
            });
        }
        i = body_end.max(i + 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_with_docstrings_become_exercises() {
        let src = "import os\n\ndef add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n    return a + b\n\n\ndef nodoc(x):\n    return x\n\nclass K:\n    def mul(self, a,\n            b):\n        pass\n\n    def scale(self, k):\n        '''Scale by k.\n\n        Returns self.\n        '''\n        self.k = k\n\n        return self\n\nx = 1\n";
        let ex = extract(src, 50);
        assert_eq!(ex.len(), 2, "{ex:?}");
        assert_eq!(ex[0].prompt, "def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n");
        assert_eq!(ex[0].response, "    return a + b\n");
        assert!(ex[1].prompt.starts_with("    def scale(self, k):\n        '''Scale by k."));
        assert_eq!(ex[1].response, "        self.k = k\n\n        return self\n");
    }
}
