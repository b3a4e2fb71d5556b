//! Progress bars for the demo and the bench (hidden with `--quiet`).

use indicatif::{MultiProgress, ProgressBar, ProgressState, ProgressStyle};

/// A bar of `len` steps labelled `label`, with its rate per second.
pub fn bar(mp: &MultiProgress, len: u64, label: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = mp.add(ProgressBar::new(len));
    b.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos}/{len} {rate} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", s.per_sec());
            })
            .progress_chars("=> "),
    );
    b.set_prefix(label.to_owned());
    b
}
