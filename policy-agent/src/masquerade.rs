//! The agent's masquerade duty (with `--cluster-cidr`): keep the node's
//! masquerade chain for this node's pod CIDR, re-asserting it on a resync when
//! it went missing. The kernel side is weft-netkit's `masquerade`, the same
//! rules the plugin's ADD writes; `MasqKernel` lets the skip logic be tested
//! without iptables.

use ipnetwork::{IpNetwork, Ipv4Network};
use tracing::info;
use weft_netkit::kernel_error::KernelError;
use weft_netkit::masquerade::{ensure_masquerade, masquerade_present, MASQ_CHAIN};

/// The kernel side of the masquerade duty; a trait so the skip logic is tested
/// without iptables.
pub trait MasqKernel {
    fn present(&self, pod_cidr: Ipv4Network, cluster: IpNetwork, comment: &str) -> Result<bool, KernelError>;
    fn ensure(&self, pod_cidr: Ipv4Network, cluster: IpNetwork, comment: &str) -> Result<(), KernelError>;
}

/// The real kernel: weft-plugin's masquerade module, as the plugin's ADD uses it.
pub struct MasqIptables;

impl MasqKernel for MasqIptables {
    fn present(&self, pod_cidr: Ipv4Network, cluster: IpNetwork, comment: &str) -> Result<bool, KernelError> {
        masquerade_present(&[pod_cidr.into()], Some(cluster), comment)
    }
    fn ensure(&self, pod_cidr: Ipv4Network, cluster: IpNetwork, comment: &str) -> Result<(), KernelError> {
        ensure_masquerade(&[pod_cidr.into()], Some(cluster), comment)
    }
}

/// The masquerade duty (with `--cluster-cidr`): keep `MASQ_CHAIN` for this
/// node's pod CIDR. Remembers what it last ensured, so a resync that finds the
/// rules intact costs a few `iptables -C`, never a restore.
#[derive(Debug)]
pub struct Masquerade {
    cluster_cidr: IpNetwork,
    comment: String,
    /// The pod CIDR of the last successful ensure; None before it or after a failure.
    ensured: Option<Ipv4Network>,
}

impl Masquerade {
    pub fn new(cluster_cidr: IpNetwork, comment: &str) -> Masquerade {
        Masquerade { cluster_cidr, comment: comment.into(), ensured: None }
    }

    /// Ensures the chain for `pod_cidr` (this node's, from the model) unless it
    /// was ensured for the same CIDR and is still in place. Returns the CIDR in
    /// force, or the error for the status. Without a pod CIDR the kernel is left
    /// as it is: the node may only be missing from the state for a moment.
    /// `full` (a resync) checks the kernel; between resyncs the rules this
    /// agent ensured are trusted, so a change (a CNI ADD may wait on one)
    /// costs no iptables process.
    pub fn reconcile(
        &mut self,
        k: &impl MasqKernel,
        pod_cidr: Option<Ipv4Network>,
        full: bool,
    ) -> Result<Ipv4Network, String> {
        let Some(cidr) = pod_cidr else {
            return Err(
                "masquerade: this node has no IPv4 podCIDR in the cluster state; rules left as they are"
                    .into(),
            );
        };
        let why = match self.ensured {
            None => "ensured",
            Some(old) if old != cidr => "rewritten (pod CIDR changed)",
            Some(_) if !full => return Ok(cidr),
            Some(_) => match k.present(cidr, self.cluster_cidr, &self.comment) {
                Ok(true) => return Ok(cidr),
                Ok(false) => "re-asserted (rules were missing)",
                // The ensure below reports the real error if iptables is broken.
                Err(_) => "re-asserted (the presence check failed)",
            },
        };
        match k.ensure(cidr, self.cluster_cidr, &self.comment) {
            Ok(()) => {
                info!(pod_cidr = %cidr, "masquerade: {MASQ_CHAIN} for {cidr} {why} (cluster {})", self.cluster_cidr);
                self.ensured = Some(cidr);
                Ok(cidr)
            }
            Err(e) => {
                self.ensured = None;
                Err(format!("masquerade {cidr}: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::io;

    use super::*;

    /// A kernel that records calls; `present` answers `rules_in_place`.
    #[derive(Default)]
    struct Fake {
        rules_in_place: Cell<bool>,
        fail_check: Cell<bool>,
        fail_ensure: Cell<bool>,
        checks: Cell<u32>,
        ensured: RefCell<Vec<(Ipv4Network, IpNetwork, String)>>,
    }

    fn err() -> KernelError {
        KernelError::ToolFailed { cmd: "iptables-restore".into(), stderr: "boom".into() }
    }

    impl MasqKernel for Fake {
        fn present(&self, _: Ipv4Network, _: IpNetwork, _: &str) -> Result<bool, KernelError> {
            self.checks.set(self.checks.get() + 1);
            if self.fail_check.get() {
                return Err(KernelError::Io { what: "run iptables".into(), source: io::Error::other("x") });
            }
            Ok(self.rules_in_place.get())
        }
        fn ensure(&self, cidr: Ipv4Network, cluster: IpNetwork, comment: &str) -> Result<(), KernelError> {
            if self.fail_ensure.get() {
                return Err(err());
            }
            self.ensured.borrow_mut().push((cidr, cluster, comment.into()));
            self.rules_in_place.set(true);
            Ok(())
        }
    }

    fn v4(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn duty() -> Masquerade {
        Masquerade::new("10.244.0.0/16".parse().unwrap(), "weft")
    }

    #[test]
    fn first_sync_ensures_then_an_intact_rule_costs_only_the_check() {
        let (k, mut m) = (Fake::default(), duty());
        assert_eq!(m.reconcile(&k, Some(v4("10.244.1.0/24")), true), Ok(v4("10.244.1.0/24")));
        // Nothing ensured yet: no check, straight to the restore.
        assert_eq!(k.checks.get(), 0);
        let want = (v4("10.244.1.0/24"), "10.244.0.0/16".parse().unwrap(), "weft".to_string());
        assert_eq!(*k.ensured.borrow(), [want]);
        for _ in 0..3 {
            assert_eq!(m.reconcile(&k, Some(v4("10.244.1.0/24")), true), Ok(v4("10.244.1.0/24")));
        }
        assert_eq!((k.checks.get(), k.ensured.borrow().len()), (3, 1));
    }

    #[test]
    fn between_resyncs_the_ensured_rule_is_trusted() {
        let (k, mut m) = (Fake::default(), duty());
        m.reconcile(&k, Some(v4("10.244.1.0/24")), true).unwrap();
        k.rules_in_place.set(false);
        assert_eq!(m.reconcile(&k, Some(v4("10.244.1.0/24")), false), Ok(v4("10.244.1.0/24")));
        assert_eq!((k.checks.get(), k.ensured.borrow().len()), (0, 1), "no check, no ensure");
        // A new pod CIDR is written whatever the kind of sync; a resync checks and repairs.
        m.reconcile(&k, Some(v4("10.244.7.0/24")), false).unwrap();
        assert_eq!(k.ensured.borrow().len(), 2);
        k.rules_in_place.set(false);
        m.reconcile(&k, Some(v4("10.244.7.0/24")), true).unwrap();
        assert_eq!((k.checks.get(), k.ensured.borrow().len()), (1, 3));
    }

    #[test]
    fn missing_rules_are_re_asserted() {
        let (k, mut m) = (Fake::default(), duty());
        m.reconcile(&k, Some(v4("10.244.1.0/24")), true).unwrap();
        k.rules_in_place.set(false);
        assert_eq!(m.reconcile(&k, Some(v4("10.244.1.0/24")), true), Ok(v4("10.244.1.0/24")));
        assert_eq!(k.ensured.borrow().len(), 2);
    }

    #[test]
    fn a_new_pod_cidr_is_written_without_a_check() {
        let (k, mut m) = (Fake::default(), duty());
        m.reconcile(&k, Some(v4("10.244.1.0/24")), true).unwrap();
        assert_eq!(m.reconcile(&k, Some(v4("10.244.7.0/24")), true), Ok(v4("10.244.7.0/24")));
        assert_eq!(k.checks.get(), 0);
        assert_eq!(k.ensured.borrow()[1].0, v4("10.244.7.0/24"));
    }

    #[test]
    fn a_failing_check_falls_back_to_the_ensure() {
        let (k, mut m) = (Fake::default(), duty());
        m.reconcile(&k, Some(v4("10.244.1.0/24")), true).unwrap();
        k.fail_check.set(true);
        assert_eq!(m.reconcile(&k, Some(v4("10.244.1.0/24")), true), Ok(v4("10.244.1.0/24")));
        assert_eq!(k.ensured.borrow().len(), 2);
    }

    #[test]
    fn a_failed_ensure_is_an_error_and_is_retried_next_sync() {
        let (k, mut m) = (Fake::default(), duty());
        k.fail_ensure.set(true);
        let e = m.reconcile(&k, Some(v4("10.244.1.0/24")), true).unwrap_err();
        assert!(e.contains("10.244.1.0/24") && e.contains("boom"), "{e}");
        k.fail_ensure.set(false);
        assert_eq!(m.reconcile(&k, Some(v4("10.244.1.0/24")), true), Ok(v4("10.244.1.0/24")));
        // After a failure nothing counts as ensured, so no check was trusted.
        assert_eq!((k.checks.get(), k.ensured.borrow().len()), (0, 1));
    }

    #[test]
    fn no_pod_cidr_touches_nothing() {
        let (k, mut m) = (Fake::default(), duty());
        let e = m.reconcile(&k, None, true).unwrap_err();
        assert!(e.contains("no IPv4 podCIDR"), "{e}");
        assert_eq!((k.checks.get(), k.ensured.borrow().len()), (0, 0));
    }
}
