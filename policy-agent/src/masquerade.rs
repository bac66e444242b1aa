//! The agent's masquerade duty (with `--cluster-cidr`): keep the node's
//! masquerade rules for this node's pod CIDRs (IPv4 and IPv6) in the backend
//! that goes with the policy backend, re-asserting them on a resync when
//! they went missing, and remove weft's rules from the other backends once
//! they are in place. Each pod CIDR returns to the cluster CIDR of its family.
//! The kernel side is weft-netkit's `masquerade`, the same rules the
//! plugin's ADD writes (the conflist names the same backend);
//! `MasqKernel` lets the skip logic be tested without the kernel.

use ipnetwork::IpNetwork;
use tracing::info;

use crate::backend::BackendChoice;
use weft_conf::MasqueradeBackend;
use weft_netkit::kernel_error::KernelError;
use weft_netkit::masquerade::{
    ensure_masquerade, masquerade_present, teardown_masquerade_except, MasqBackend,
};

/// The kernel side of the masquerade duty; a trait so the skip logic is tested
/// without the kernel.
pub trait MasqKernel {
    fn present(
        &self,
        pod_cidrs: &[IpNetwork],
        cluster: &[IpNetwork],
        comment: &str,
    ) -> Result<bool, KernelError>;
    fn ensure(
        &self,
        pod_cidrs: &[IpNetwork],
        cluster: &[IpNetwork],
        comment: &str,
    ) -> Result<(), KernelError>;
    /// Removes weft's masquerade from every other backend.
    fn remove_others(&self) -> Result<(), KernelError>;
}

/// The real kernel, in one backend: weft-netkit's masquerade, as the
/// plugin's ADD uses it.
pub struct MasqIn(pub MasqBackend);

impl MasqKernel for MasqIn {
    fn present(
        &self,
        pod_cidrs: &[IpNetwork],
        cluster: &[IpNetwork],
        comment: &str,
    ) -> Result<bool, KernelError> {
        masquerade_present(self.0, pod_cidrs, cluster, comment)
    }
    fn ensure(
        &self,
        pod_cidrs: &[IpNetwork],
        cluster: &[IpNetwork],
        comment: &str,
    ) -> Result<(), KernelError> {
        ensure_masquerade(self.0, pod_cidrs, cluster, comment)
    }
    fn remove_others(&self) -> Result<(), KernelError> {
        teardown_masquerade_except(Some(self.0))
    }
}

/// Where masquerade goes with policy backend `pick`: nftables with
/// nftables, else iptables in the host's mode (the plugin decides the same
/// way from the conflist the agent writes).
pub fn backend_for(pick: BackendChoice) -> Result<MasqBackend, KernelError> {
    let choice = match pick {
        BackendChoice::Nftables => MasqueradeBackend::Nftables,
        _ => MasqueradeBackend::Iptables,
    };
    MasqBackend::on_this_host(choice)
}

/// "10.244.1.0/24,fd00::af4:100/120", as the status shows pod CIDRs.
pub fn joined(cidrs: &[IpNetwork]) -> String {
    cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// The masquerade duty (with `--cluster-cidr`): keep `MASQ_CHAIN` for this
/// node's pod CIDRs. Remembers what it last ensured, so a resync that finds the
/// rules intact costs a few `iptables -C`, never a restore.
#[derive(Debug)]
pub struct Masquerade {
    /// At most one per family.
    cluster_cidrs: Vec<IpNetwork>,
    comment: String,
    /// The pod CIDRs of the last successful ensure; None before it or after a failure.
    ensured: Option<Vec<IpNetwork>>,
    /// The other backends were cleared of weft's masquerade (after the first
    /// ensure, so the node is never without one).
    others_removed: bool,
}

impl Masquerade {
    pub fn new(cluster_cidrs: Vec<IpNetwork>, comment: &str) -> Masquerade {
        Masquerade { cluster_cidrs, comment: comment.into(), ensured: None, others_removed: false }
    }

    /// Ensures the chain for `pod_cidrs` (this node's, from the model, IPv4
    /// first) unless it was ensured for the same CIDRs and is still in place.
    /// Returns the CIDRs in force, or the error for the status. Without a pod
    /// CIDR the kernel is left as it is: the node may only be missing from the
    /// state for a moment. `full` (a resync) checks the kernel; between
    /// resyncs the rules this agent ensured are trusted, so a change (a CNI
    /// ADD may wait on one) costs no iptables process.
    pub fn reconcile(
        &mut self,
        k: &impl MasqKernel,
        pod_cidrs: &[IpNetwork],
        full: bool,
    ) -> Result<Vec<IpNetwork>, String> {
        if pod_cidrs.is_empty() {
            return Err(
                "masquerade: this node has no podCIDR in the cluster state; rules left as they are".into()
            );
        }
        let why = match &self.ensured {
            None => "ensured",
            Some(old) if old != pod_cidrs => "rewritten (pod CIDR changed)",
            Some(_) if !full => return Ok(pod_cidrs.to_vec()),
            Some(_) => match k.present(pod_cidrs, &self.cluster_cidrs, &self.comment) {
                Ok(true) => return self.remove_others(k, pod_cidrs),
                Ok(false) => "re-asserted (rules were missing)",
                // The ensure below reports the real error if the tools are broken.
                Err(_) => "re-asserted (the presence check failed)",
            },
        };
        let (cidrs, cluster) = (joined(pod_cidrs), joined(&self.cluster_cidrs));
        match k.ensure(pod_cidrs, &self.cluster_cidrs, &self.comment) {
            Ok(()) => {
                info!(pod_cidr = %cidrs, "masquerade for {cidrs} {why} (cluster {cluster})");
                self.ensured = Some(pod_cidrs.to_vec());
                self.remove_others(k, pod_cidrs)
            }
            Err(e) => {
                self.ensured = None;
                Err(format!("masquerade {cidrs}: {e}"))
            }
        }
    }

    /// Clears the other backends once; a failure is reported and retried.
    fn remove_others(&mut self, k: &impl MasqKernel, cidrs: &[IpNetwork]) -> Result<Vec<IpNetwork>, String> {
        if self.others_removed {
            return Ok(cidrs.to_vec());
        }
        match k.remove_others() {
            Ok(()) => {
                self.others_removed = true;
                Ok(cidrs.to_vec())
            }
            Err(e) => Err(format!("masquerade: removing weft's rules from the other backends: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::io;

    use super::*;

    /// One ensure: pod CIDRs, cluster CIDRs, comment.
    type Ensured = (Vec<IpNetwork>, Vec<IpNetwork>, String);

    /// A kernel that records calls; `present` answers `rules_in_place`.
    #[derive(Default)]
    struct Fake {
        rules_in_place: Cell<bool>,
        fail_check: Cell<bool>,
        fail_ensure: Cell<bool>,
        fail_remove: Cell<bool>,
        removes: Cell<u32>,
        checks: Cell<u32>,
        ensured: RefCell<Vec<Ensured>>,
    }

    fn err() -> KernelError {
        KernelError::ToolFailed { cmd: "iptables-restore".into(), stderr: "boom".into() }
    }

    impl MasqKernel for Fake {
        fn present(&self, _: &[IpNetwork], _: &[IpNetwork], _: &str) -> Result<bool, KernelError> {
            self.checks.set(self.checks.get() + 1);
            if self.fail_check.get() {
                return Err(KernelError::Io { what: "run iptables".into(), source: io::Error::other("x") });
            }
            Ok(self.rules_in_place.get())
        }
        fn ensure(
            &self,
            cidr: &[IpNetwork],
            cluster: &[IpNetwork],
            comment: &str,
        ) -> Result<(), KernelError> {
            if self.fail_ensure.get() {
                return Err(err());
            }
            self.ensured.borrow_mut().push((cidr.to_vec(), cluster.to_vec(), comment.into()));
            self.rules_in_place.set(true);
            Ok(())
        }
        fn remove_others(&self) -> Result<(), KernelError> {
            self.removes.set(self.removes.get() + 1);
            if self.fail_remove.get() {
                return Err(err());
            }
            Ok(())
        }
    }

    fn v4(s: &str) -> Vec<IpNetwork> {
        vec![s.parse().unwrap()]
    }

    fn duty() -> Masquerade {
        Masquerade::new(v4("10.244.0.0/16"), "weft")
    }

    #[test]
    fn first_sync_ensures_then_an_intact_rule_costs_only_the_check() {
        let (k, mut m) = (Fake::default(), duty());
        assert_eq!(m.reconcile(&k, &v4("10.244.1.0/24"), true), Ok(v4("10.244.1.0/24")));
        // Nothing ensured yet: no check, straight to the restore.
        assert_eq!(k.checks.get(), 0);
        let want = (v4("10.244.1.0/24"), v4("10.244.0.0/16"), "weft".to_string());
        assert_eq!(*k.ensured.borrow(), [want]);
        for _ in 0..3 {
            assert_eq!(m.reconcile(&k, &v4("10.244.1.0/24"), true), Ok(v4("10.244.1.0/24")));
        }
        assert_eq!((k.checks.get(), k.ensured.borrow().len()), (3, 1));
    }

    #[test]
    fn the_other_backends_are_cleared_once_after_the_first_ensure_and_retried_on_failure() {
        let (k, mut m) = (Fake::default(), duty());
        k.fail_ensure.set(true);
        assert!(m.reconcile(&k, &v4("10.244.1.0/24"), true).is_err());
        assert_eq!(k.removes.get(), 0, "never before weft's own rules are in place");
        k.fail_ensure.set(false);
        k.fail_remove.set(true);
        let e = m.reconcile(&k, &v4("10.244.1.0/24"), true).unwrap_err();
        assert!(e.contains("other backends"), "{e}");
        k.fail_remove.set(false);
        for _ in 0..3 {
            m.reconcile(&k, &v4("10.244.1.0/24"), true).unwrap();
        }
        assert_eq!(k.removes.get(), 2, "retried at the next resync, then never again");
        assert_eq!(k.ensured.borrow().len(), 1, "the rules stayed in place meanwhile");
    }

    #[test]
    fn between_resyncs_the_ensured_rule_is_trusted() {
        let (k, mut m) = (Fake::default(), duty());
        m.reconcile(&k, &v4("10.244.1.0/24"), true).unwrap();
        k.rules_in_place.set(false);
        assert_eq!(m.reconcile(&k, &v4("10.244.1.0/24"), false), Ok(v4("10.244.1.0/24")));
        assert_eq!((k.checks.get(), k.ensured.borrow().len()), (0, 1), "no check, no ensure");
        // A new pod CIDR is written whatever the kind of sync; a resync checks and repairs.
        m.reconcile(&k, &v4("10.244.7.0/24"), false).unwrap();
        assert_eq!(k.ensured.borrow().len(), 2);
        k.rules_in_place.set(false);
        m.reconcile(&k, &v4("10.244.7.0/24"), true).unwrap();
        assert_eq!((k.checks.get(), k.ensured.borrow().len()), (1, 3));
    }

    #[test]
    fn a_dual_stack_node_masquerades_both_pod_cidrs_each_to_its_cluster_cidr() {
        let k = Fake::default();
        let cluster = [v4("10.244.0.0/16"), v4("fd00::af4:0/112")].concat();
        let mut m = Masquerade::new(cluster.clone(), "weft");
        m.reconcile(&k, &v4("10.244.1.0/24"), true).unwrap();
        // The node's IPv6 pod CIDR shows up (a node turned dual-stack): rewritten without a check.
        let both = [v4("10.244.1.0/24"), v4("fd00::af4:100/120")].concat();
        assert_eq!(m.reconcile(&k, &both, true), Ok(both.clone()));
        assert_eq!((k.checks.get(), k.ensured.borrow().len()), (0, 2));
        assert_eq!(k.ensured.borrow()[1], (both.clone(), cluster, "weft".to_string()));
        assert_eq!(joined(&both), "10.244.1.0/24,fd00::af4:100/120");
    }

    #[test]
    fn missing_rules_are_re_asserted() {
        let (k, mut m) = (Fake::default(), duty());
        m.reconcile(&k, &v4("10.244.1.0/24"), true).unwrap();
        k.rules_in_place.set(false);
        assert_eq!(m.reconcile(&k, &v4("10.244.1.0/24"), true), Ok(v4("10.244.1.0/24")));
        assert_eq!(k.ensured.borrow().len(), 2);
    }

    #[test]
    fn a_new_pod_cidr_is_written_without_a_check() {
        let (k, mut m) = (Fake::default(), duty());
        m.reconcile(&k, &v4("10.244.1.0/24"), true).unwrap();
        assert_eq!(m.reconcile(&k, &v4("10.244.7.0/24"), true), Ok(v4("10.244.7.0/24")));
        assert_eq!(k.checks.get(), 0);
        assert_eq!(k.ensured.borrow()[1].0, v4("10.244.7.0/24"));
    }

    #[test]
    fn a_failing_check_falls_back_to_the_ensure() {
        let (k, mut m) = (Fake::default(), duty());
        m.reconcile(&k, &v4("10.244.1.0/24"), true).unwrap();
        k.fail_check.set(true);
        assert_eq!(m.reconcile(&k, &v4("10.244.1.0/24"), true), Ok(v4("10.244.1.0/24")));
        assert_eq!(k.ensured.borrow().len(), 2);
    }

    #[test]
    fn a_failed_ensure_is_an_error_and_is_retried_next_sync() {
        let (k, mut m) = (Fake::default(), duty());
        k.fail_ensure.set(true);
        let e = m.reconcile(&k, &v4("10.244.1.0/24"), true).unwrap_err();
        assert!(e.contains("10.244.1.0/24") && e.contains("boom"), "{e}");
        k.fail_ensure.set(false);
        assert_eq!(m.reconcile(&k, &v4("10.244.1.0/24"), true), Ok(v4("10.244.1.0/24")));
        // After a failure nothing counts as ensured, so no check was trusted.
        assert_eq!((k.checks.get(), k.ensured.borrow().len()), (0, 1));
    }

    #[test]
    fn no_pod_cidr_touches_nothing() {
        let (k, mut m) = (Fake::default(), duty());
        let e = m.reconcile(&k, &[], true).unwrap_err();
        assert!(e.contains("no podCIDR"), "{e}");
        assert_eq!((k.checks.get(), k.ensured.borrow().len()), (0, 0));
    }
}
