//! Every conformance case (e2e/cases, and the ClusterNetworkPolicy ones in
//! e2e/cases-cnp) evaluated without a kernel: the cluster
//! state of each step as the agents' model, each probe's expected verdict
//! checked against the compiled rules and the policies (`conformance::pure`).
//! No root, seconds: `make test` runs this binary before everything else, so
//! a semantic regression shows even where the kernel suites cannot run.

mod common;

use std::path::Path;

use common::WRONG;
use weft_e2e::conformance::{cases_dir, cnp_cases_dir, load_paths, parse_case, pure};

/// Every case of `dir` (at least `min`) evaluated: (cases, verdicts
/// checked); panics naming every failing verdict.
fn holds(dir: &Path, min: usize) -> (usize, usize) {
    let cases = load_paths(&[dir.to_path_buf()]).expect("the cases load (an empty dir is an error)");
    assert!(cases.len() >= min, "only {} cases in {}", cases.len(), dir.display());
    let (mut checked, mut failures) = (0, Vec::new());
    for case in &cases {
        let want: usize = case.steps.iter().flat_map(|s| &s.probes).map(|p| p.verdicts()).sum();
        let r = pure::evaluate(case);
        assert!(want > 0, "{} has no probe", case.name);
        if r.failures.is_empty() {
            assert_eq!(r.checked, want, "{}: every verdict of every probe is checked", case.name);
        }
        checked += r.checked;
        failures.extend(r.failures.into_iter().map(|f| format!("{}: {f}", case.name)));
    }
    assert!(failures.is_empty(), "{} of {checked} verdicts fail:\n{}", failures.len(), failures.join("\n"));
    (cases.len(), checked)
}

#[test]
fn every_probe_of_every_case_holds_on_the_model() {
    let (cases, checked) = holds(cases_dir(), 70);
    eprintln!("{cases} cases, {checked} verdicts, all hold on the compiled rules and the policies");
}

/// The ClusterNetworkPolicy cases (e2e/cases-cnp): the compiled IR carries
/// the Admin and Baseline tiers, so both halves are checked here too.
#[test]
fn every_probe_of_every_cnp_case_holds_on_the_model() {
    let (cases, checked) = holds(cnp_cases_dir(), 40);
    eprintln!("{cases} ClusterNetworkPolicy cases, {checked} verdicts, all hold on the compiled rules and the policies");
}

/// The same run fails a case whose expectations are wrong, naming the cell.
#[test]
fn a_wrong_expectation_fails_and_is_named() {
    let case = parse_case(WRONG, Path::new("wrong.yaml")).unwrap();
    let r = pure::evaluate(&case);
    assert_eq!(r.checked, 5, "4 matrix cells off the diagonal and one single probe");
    assert_eq!(r.failures.len(), 2, "{:?}", r.failures);
    assert!(r.failures[0].contains("x/a -> x/b: expected deny, the model says allow"), "{}", r.failures[0]);
    assert!(r.failures[1].contains("y/a -> x/c:81 UDP"), "{}", r.failures[1]);
}
