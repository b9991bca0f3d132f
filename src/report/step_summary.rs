//! `--step-summary FILE`: a Markdown summary appended at the end of the run to the CI job
//! page's file (`$GITHUB_STEP_SUMMARY` by default). Other steps write there too, so it is
//! only ever appended to, never truncated. Memory is bounded: only the first
//! [`MAX_ITEMS`] not-OK answers are kept, the rest are counted.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};

use crate::model::{Outcome, Verdict};
use crate::report::Summary;
use crate::report::summary::{md_cell, thousands};

/// Not-OK items listed in the step summary.
pub const MAX_ITEMS: usize = 50;
/// GitHub refuses a step summary over 1 MiB; the appended text stays well under it.
pub const MAX_BYTES: usize = 1024 * 1024 - 4096;

/// One not-OK item as the step summary lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemLine {
    /// The item id.
    pub id: String,
    /// Its outcome.
    pub outcome: Outcome,
    /// The final HTTP status, if there was an answer.
    pub http_status: Option<u16>,
    /// Why it is not OK.
    pub error: Option<String>,
}

/// The step summary being gathered during the run.
#[derive(Debug)]
pub struct StepSummary {
    path: PathBuf,
    items: Vec<ItemLine>,
    /// Not-OK answers beyond the first [`MAX_ITEMS`].
    more: u64,
}

impl StepSummary {
    /// A step summary to be appended to `path`.
    pub fn new(path: &Path) -> StepSummary {
        StepSummary {
            path: path.to_path_buf(),
            items: Vec::new(),
            more: 0,
        }
    }

    /// Keeps the answer when it is one of the first [`MAX_ITEMS`] not-OK ones.
    pub fn record(&mut self, v: &Verdict) {
        if matches!(v.outcome, Outcome::Ok | Outcome::Deferred) {
            return;
        }
        if self.items.len() < MAX_ITEMS {
            self.items.push(ItemLine {
                id: v.id.clone(),
                outcome: v.outcome,
                http_status: v.http_status,
                error: v.error.clone(),
            });
        } else {
            self.more += 1;
        }
    }

    /// Appends the Markdown to the file. A path that exists but is not a regular file
    /// (a directory, a FIFO that would block) is refused from its metadata.
    pub fn finish(self, summary: &Summary) -> Result<()> {
        let shown = self.path.display();
        if let Ok(m) = std::fs::metadata(&self.path)
            && !m.is_file()
        {
            bail!("--step-summary {shown}: is not a regular file");
        }
        let text = render(summary, &self.items, self.more);
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(|e| anyhow!("--step-summary {shown}: cannot open for appending: {e}"))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.flush())
            .map_err(|e| anyhow!("--step-summary {shown}: cannot append: {e}"))
    }
}

/// The appended text: the summary's Markdown, then the listed items and how many more
/// there were. Under [`MAX_BYTES`]: every cell is cut by [`md_cell`], and a last guard cuts
/// the list should the text still grow too large.
pub fn render(summary: &Summary, items: &[ItemLine], more: u64) -> String {
    // A blank line first: what an earlier step appended may not end a paragraph.
    let mut s = format!("\n{}", summary.markdown());
    if !items.is_empty() {
        s.push_str(&format!(
            "\n#### Not OK (first {})\n\n| item | outcome | HTTP | error |\n| --- | --- | ---: | --- |\n",
            items.len()
        ));
        let mut left = more;
        for (i, it) in items.iter().enumerate() {
            let row = format!(
                "| {} | {} | {} | {} |\n",
                md_cell(&it.id),
                it.outcome.as_str(),
                it.http_status.map_or(String::new(), |c| c.to_string()),
                md_cell(it.error.as_deref().unwrap_or(""))
            );
            if s.len() + row.len() + 200 > MAX_BYTES {
                left += (items.len() - i) as u64;
                break;
            }
            s.push_str(&row);
        }
        if left > 0 {
            s.push_str(&format!(
                "\n... and {} more not-OK items (`--report FILE` lists every item)\n",
                thousands(left)
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn verdict(id: &str, outcome: Outcome, error: Option<&str>) -> Verdict {
        Verdict {
            key: 0,
            id: id.into(),
            outcome,
            http_status: Some(200),
            attempts: 1,
            error: error.map(Into::into),
            checked_at: SystemTime::now(),
            elapsed: Duration::from_millis(20),
            url: None,
            next_check_at: None,
            host_limit: None,
        }
    }

    /// Cells of a Markdown table row, split at unescaped `|`.
    fn cells(row: &str) -> usize {
        let mut n = 0;
        let mut prev = ' ';
        for c in row.chars() {
            if c == '|' && prev != '\\' {
                n += 1;
            }
            prev = c;
        }
        n - 1
    }

    #[test]
    fn keeps_the_first_fifty_and_counts_the_rest() {
        let mut st = StepSummary::new(Path::new("unused"));
        let mut summary = Summary::new("t|<b>", "sqlite:x.db", true);
        for i in 0..120 {
            let v = if i % 2 == 0 {
                verdict(&format!("ok-{i}"), Outcome::Ok, None)
            } else {
                verdict(
                    &format!("a|b<script>`{i}`\nx"),
                    Outcome::StillFailed,
                    Some("/status is \"processing\" | expected <done>"),
                )
            };
            summary.add(&v);
            st.record(&v);
        }
        assert_eq!((st.items.len(), st.more), (50, 10));
        let text = render(&summary, &st.items, st.more);
        assert!(!text.contains("<script>") && !text.contains("<b>"));
        assert!(text.contains("(dry run: nothing written)"));
        assert!(text.contains("... and 10 more not-OK items"));
        // Every row of a table has as many cells as its header.
        let mut want = None;
        for line in text.lines() {
            if line.starts_with('|') {
                let n = cells(line);
                assert_eq!(*want.get_or_insert(n), n, "{line}");
            } else {
                want = None;
            }
        }
        insta::assert_snapshot!(text.lines().take(30).collect::<Vec<_>>().join("\n"));
    }

    #[test]
    fn stays_under_the_bound_with_huge_texts() {
        let mut st = StepSummary::new(Path::new("unused"));
        let mut summary = Summary::new("t", "x", false);
        let huge = "<|`&\\".repeat(100_000);
        for i in 0..1000 {
            let v = verdict(
                &format!("{huge}{i}"),
                Outcome::Error,
                Some(&format!("{huge}{i}")),
            );
            summary.add(&v);
            st.record(&v);
        }
        let text = render(&summary, &st.items, st.more);
        assert!(text.len() < MAX_BYTES, "{}", text.len());
        assert!(text.contains("... and 950 more"));
    }
}
