//! BENCHMARKS.md sections from measured results: pure text in, text out.
//!
//! `comparison_table` summarises repeated load runs per label (medians, and the ratio of each
//! label's median rps to a baseline's measured in the same run); `replace_section` swaps one
//! `## Title` section of the document for new text, leaving every other section as it was, so
//! scripts owned by different people can each rewrite their own section.

use crate::dev::bench::loadgen::{LoadReport, join_counts};

/// Median of `values` (mean of the middle two for an even count); 0 for none.
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

/// Labels in the order they first appear.
fn labels(reports: &[LoadReport]) -> Vec<&str> {
    let mut labels: Vec<&str> = Vec::new();
    for report in reports {
        if !labels.contains(&report.label.as_str()) {
            labels.push(&report.label);
        }
    }
    labels
}

fn runs_of<'a>(reports: &'a [LoadReport], label: &str) -> Vec<&'a LoadReport> {
    reports.iter().filter(|r| r.label == label).collect()
}

fn median_of(runs: &[&LoadReport], value: fn(&LoadReport) -> f64) -> f64 {
    let mut values: Vec<f64> = runs.iter().map(|r| value(r)).collect();
    median(&mut values)
}

/// One row per label, in the order labels first appear: median rps and latency percentiles
/// over the label's runs, errors and decisions summed, and median rps relative to `baseline`.
pub fn comparison_table(reports: &[LoadReport], baseline: &str) -> String {
    let baseline_rps = median_of(&runs_of(reports, baseline), |r| r.rps);
    let mut table = String::from(
        "| server | runs | rps (median) | vs no-op | p50 µs | p99 µs | p999 µs | server CPU µs/Check | errors | decisions |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for label in labels(reports) {
        let runs = runs_of(reports, label);
        let rps = median_of(&runs, |r| r.rps);
        let ratio = if label == baseline {
            "1.00×".to_string()
        } else if baseline_rps > 0.0 {
            format!("{:.2}×", rps / baseline_rps)
        } else {
            "–".to_string()
        };
        let errors: u64 = runs.iter().map(|r| r.errors).sum();
        let mut decisions = std::collections::BTreeMap::<&str, u64>::new();
        for run in &runs {
            for (decision, count) in &run.decisions {
                *decisions.entry(decision).or_default() += count;
            }
        }
        let measured_cpu: Vec<&LoadReport> = runs
            .iter()
            .copied()
            .filter(|r| r.server_cpu_us_per_check.is_some())
            .collect();
        let server_cpu = if measured_cpu.is_empty() {
            "–".to_string()
        } else {
            format!(
                "{:.1}",
                median_of(&measured_cpu, |r| r.server_cpu_us_per_check.unwrap_or(0.0))
            )
        };
        table.push_str(&format!(
            "| {label} | {} | {rps:.0} | {ratio} | {:.0} | {:.0} | {:.0} | {server_cpu} | {errors} | {} |\n",
            runs.len(),
            median_of(&runs, |r| r.latency.p50_us),
            median_of(&runs, |r| r.latency.p99_us),
            median_of(&runs, |r| r.latency.p999_us),
            join_counts(&decisions),
        ));
    }
    table
}

/// One line per label other than `baseline`: its median rps against the baseline's and its
/// median p99 against the goals, each marked met or missed.
pub fn goal_lines(
    reports: &[LoadReport],
    baseline: &str,
    min_ratio: f64,
    max_p99_us: f64,
) -> String {
    let verdict = |met: bool| if met { "met" } else { "missed" };
    let baseline_rps = median_of(&runs_of(reports, baseline), |r| r.rps);
    let mut text = String::new();
    for label in labels(reports)
        .into_iter()
        .filter(|label| *label != baseline)
    {
        let runs = runs_of(reports, label);
        let ratio = if baseline_rps > 0.0 {
            median_of(&runs, |r| r.rps) / baseline_rps
        } else {
            0.0
        };
        let p99 = median_of(&runs, |r| r.latency.p99_us);
        text.push_str(&format!(
            "- {label}: {ratio:.2}× the {baseline} (goal ≥ {min_ratio:.2}×: {}), \
             p99 {p99:.0} µs (goal ≤ {max_p99_us:.0} µs: {})\n",
            verdict(ratio >= min_ratio),
            verdict(p99 <= max_p99_us),
        ));
    }
    text
}

/// `document` with its `## {title}` section (up to the next `## ` heading) replaced by `body`,
/// or with the section appended if there is none yet.
pub fn replace_section(document: &str, title: &str, body: &str) -> String {
    let heading = format!("## {title}");
    let section = format!("{heading}\n\n{}\n", body.trim_end());
    let lines: Vec<&str> = document.lines().collect();
    let Some(start) = lines.iter().position(|line| line.trim_end() == heading) else {
        let mut text = document.trim_end().to_string();
        text.push_str("\n\n");
        text.push_str(&section);
        return text;
    };
    let end = lines[start + 1..]
        .iter()
        .position(|line| line.starts_with("## "))
        .map(|offset| start + 1 + offset);
    let mut text = lines[..start].join("\n");
    if start > 0 {
        text.push('\n');
    }
    text.push_str(&section);
    if let Some(end) = end {
        text.push('\n');
        text.push_str(&lines[end..].join("\n"));
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }

    #[test]
    fn a_section_is_replaced_in_place_and_others_are_kept() {
        let document = "# Benchmarks\n\n## A\n\nold a\n\n## B\n\nold b\n";
        let replaced = replace_section(document, "A", "new a\n");
        assert_eq!(replaced, "# Benchmarks\n\n## A\n\nnew a\n\n## B\n\nold b\n");
        let last = replace_section(document, "B", "new b");
        assert_eq!(last, "# Benchmarks\n\n## A\n\nold a\n\n## B\n\nnew b\n");
        let added = replace_section(document, "C", "c");
        assert_eq!(added, format!("{}\n## C\n\nc\n", document));
    }

    #[test]
    fn table_takes_medians_and_ratios_against_the_baseline() {
        let run = |label: &str, rps: f64, p99: f64| LoadReport {
            label: label.into(),
            rps,
            latency: crate::dev::bench::loadgen::Latency {
                p99_us: p99,
                ..Default::default()
            },
            decisions: [("ok".to_string(), 10)].into_iter().collect(),
            ..Default::default()
        };
        let with_cpu = |mut report: LoadReport, cpu: f64| {
            report.server_cpu_us_per_check = Some(cpu);
            report
        };
        let reports = [
            run("no-op", 100.0, 5.0),
            with_cpu(run("authz", 80.0, 9.0), 30.0),
            run("no-op", 120.0, 7.0),
            with_cpu(run("authz", 90.0, 11.0), 20.0),
            run("no-op", 110.0, 6.0),
            // A run without the server's CPU is left out of that column's median.
            run("authz", 85.0, 10.0),
        ];
        let table = comparison_table(&reports, "no-op");
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(
            rows[0],
            "| no-op | 3 | 110 | 1.00× | 0 | 6 | 0 | – | 0 | ok 30 |"
        );
        assert_eq!(
            rows[1],
            "| authz | 3 | 85 | 0.77× | 0 | 10 | 0 | 25.0 | 0 | ok 30 |"
        );
        assert_eq!(
            goal_lines(&reports, "no-op", 0.85, 1000.0),
            "- authz: 0.77× the no-op (goal ≥ 0.85×: missed), p99 10 µs (goal ≤ 1000 µs: met)\n"
        );
    }
}
