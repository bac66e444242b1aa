//! Which iptables the host uses, legacy or nft, decided as kube-proxy's
//! iptables-wrapper does (kubernetes-sigs/iptables-wrappers): the mode that
//! holds the host's rules. A `KUBE-IPTABLES-HINT` or `KUBE-KUBELET-CANARY`
//! chain (the kubelet's marker) settles it; else legacy when it holds 10
//! rules or more, or more rules than nft; else nft. Writing in the other mode
//! would put weft's rules in a second, unordered rule set. `choose` is pure;
//! `detect` reads both with the save tools in the calling thread's netns.

use crate::kernel_error::KernelError;
use crate::tool;

/// An iptables mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesMode {
    Legacy,
    Nft,
}

/// The chains whose presence tells the mode the kubelet chose.
const HINTS: [&str; 2] = [":KUBE-IPTABLES-HINT ", ":KUBE-KUBELET-CANARY "];
/// Legacy rules from this many on mean the host runs legacy, whatever nft holds.
const LEGACY_THRESHOLD: usize = 10;

impl IptablesMode {
    /// The mode's name, as in `iptables-<mode>`.
    pub fn name(self) -> &'static str {
        match self {
            IptablesMode::Legacy => "legacy",
            IptablesMode::Nft => "nft",
        }
    }

    /// The mode's binary for `tool` ("iptables", "ip6tables-restore", ...):
    /// `iptables-legacy`, `ip6tables-nft-restore`.
    pub fn tool(self, tool: &str) -> String {
        match tool.split_once('-') {
            Some((base, rest)) => format!("{base}-{}-{rest}", self.name()),
            None => format!("{tool}-{}", self.name()),
        }
    }
}

/// The binary for `tool` in `mode` (see `IptablesMode::tool`), or the plain
/// `tool` without a mode or where the mode's own is not installed (a host
/// with a single iptables).
pub fn tool_in(mode: Option<IptablesMode>, tool: &str) -> String {
    match mode {
        Some(m) if tool::find_tool(&m.tool(tool)).is_ok() => m.tool(tool),
        _ => tool.to_string(),
    }
}

/// The modes whose tools are installed (the plain tools alone, None, where
/// neither mode's are): every place weft's iptables rules may be.
pub fn installed() -> Vec<Option<IptablesMode>> {
    let modes: Vec<Option<IptablesMode>> = [IptablesMode::Legacy, IptablesMode::Nft]
        .into_iter()
        .filter(|m| tool::find_tool(&m.tool("iptables-restore")).is_ok())
        .map(Some)
        .collect();
    if modes.is_empty() {
        vec![None]
    } else {
        modes
    }
}

/// The mode from what `iptables-legacy-save` and `iptables-nft-save` print
/// (IPv4 and IPv6 concatenated for each).
pub fn choose(legacy_save: &str, nft_save: &str) -> IptablesMode {
    let hinted = |save: &str| save.lines().any(|l| HINTS.iter().any(|h| l.starts_with(h)));
    if hinted(nft_save) {
        return IptablesMode::Nft;
    }
    if hinted(legacy_save) {
        return IptablesMode::Legacy;
    }
    let rules = |save: &str| save.lines().filter(|l| l.starts_with('-')).count();
    let (legacy, nft) = (rules(legacy_save), rules(nft_save));
    if legacy >= LEGACY_THRESHOLD || legacy > nft {
        IptablesMode::Legacy
    } else {
        IptablesMode::Nft
    }
}

/// The host's mode, read in the calling thread's netns; read-only. A save
/// tool that is missing or fails counts as no rules in its mode.
pub fn detect() -> Result<IptablesMode, KernelError> {
    let save = |mode: IptablesMode| {
        ["iptables-save", "ip6tables-save"]
            .iter()
            .filter_map(|t| tool::output(&mode.tool(t), &[], None).ok())
            .collect::<String>()
    };
    Ok(choose(&save(IptablesMode::Legacy), &save(IptablesMode::Nft)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use IptablesMode::*;

    fn save(chains: &[&str], rules: usize) -> String {
        let mut s = String::from("*filter\n:INPUT ACCEPT [0:0]\n");
        for c in chains {
            s += &format!(":{c} - [0:0]\n");
        }
        for i in 0..rules {
            s += &format!("-A INPUT -s 10.0.0.{i}/32 -j ACCEPT\n");
        }
        s + "COMMIT\n"
    }

    #[test]
    fn the_mode_holding_the_rules_wins() {
        let table = [
            // (legacy, nft, want, why)
            (save(&[], 0), save(&[], 0), Nft, "an empty host: nft, the default of current distributions"),
            (save(&[], 3), save(&[], 0), Legacy, "only legacy has rules"),
            (save(&[], 0), save(&[], 3), Nft, "only nft has rules"),
            (save(&[], 3), save(&[], 5), Nft, "nft has more"),
            (save(&[], 12), save(&[], 40), Legacy, "10 legacy rules or more settle it"),
            (save(&[], 40), save(&["KUBE-IPTABLES-HINT"], 0), Nft, "the kubelet's hint in nft"),
            (save(&["KUBE-KUBELET-CANARY"], 0), save(&[], 40), Legacy, "the kubelet's canary in legacy"),
        ];
        for (legacy, nft, want, why) in table {
            assert_eq!(choose(&legacy, &nft), want, "{why}");
        }
    }

    #[test]
    fn tool_names() {
        assert_eq!(Legacy.tool("iptables"), "iptables-legacy");
        assert_eq!(Nft.tool("ip6tables-restore"), "ip6tables-nft-restore");
        assert_eq!(Legacy.tool("iptables-save"), "iptables-legacy-save");
    }
}
