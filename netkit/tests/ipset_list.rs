//! The netlink ipset listing against `ipset save`, in a network namespace of
//! the test's own (root; skips otherwise): every set type weft uses, both
//! families, host and /1 networks, a set large enough to span many dump
//! messages, and sets of other owners left out.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use weft_netkit::ipset_list::list_sets;
use weft_netkit::netns::run_in_new;

/// True when root; otherwise the test skips (fails under CI).
fn root() -> bool {
    weft_test_support::root_or_skip(&weft_test_support::this_test(), "a network namespace of its own")
}

fn ipset(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new("ipset")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "ipset {args:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ipset save`'s sets named weft-*: (type, sorted members).
fn saved() -> BTreeMap<String, (String, Vec<String>)> {
    let mut sets: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in ipset(&["save"], None).lines() {
        let words: Vec<&str> = line.splitn(4, ' ').collect();
        match words[..] {
            ["create", name, kind, ..] if name.starts_with("weft-") => {
                sets.entry(name.into()).or_default().0 = kind.into();
            }
            ["add", name, member, ..] | ["add", name, member] if name.starts_with("weft-") => {
                sets.entry(name.into()).or_default().1.push(member.into());
            }
            _ => {}
        }
    }
    for s in sets.values_mut() {
        s.1.sort();
    }
    sets
}

#[test]
fn the_netlink_listing_is_what_ipset_save_prints() {
    if !root() {
        return;
    }
    run_in_new(|| {
        let mut payload = String::from(
            "create weft-a hash:ip family inet\nadd weft-a 10.244.1.2\nadd weft-a 10.244.1.3\n\
             create weft-n hash:net family inet\nadd weft-n 10.0.0.0/8\nadd weft-n 172.16.0.1\n\
             add weft-n 0.0.0.0/1\nadd weft-n 128.0.0.0/1\n\
             create weft-p hash:ip,port family inet\nadd weft-p 10.244.1.2,tcp:80\nadd weft-p 10.244.1.2,udp:53\n\
             add weft-p 10.244.1.2,sctp:9000\n\
             create weft-t hash:ip,port,net family inet\nadd weft-t 10.244.1.2,tcp:443,10.1.0.0/16\n\
             add weft-t 10.244.1.2,udp:53,10.9.9.9\n\
             create weft-6 hash:ip family inet6\nadd weft-6 fd00:244:1::2\nadd weft-6 fd00::1:0:0:9\n\
             create weft-empty hash:ip family inet\n\
             create other hash:ip family inet\nadd other 10.9.9.9\n\
             create weft-big hash:ip,port family inet maxelem 131072\n",
        );
        for i in 0..30_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0af4_0000 + i / 7);
            payload += &format!("add weft-big {ip},tcp:{}\n", 1024 + i % 7);
        }
        ipset(&["restore"], Some(&payload));
        let t0 = Instant::now();
        let listed = list_sets("weft-").unwrap();
        let took = t0.elapsed();
        let t1 = Instant::now();
        let want = saved();
        eprintln!("netlink listing {took:?}, ipset save and its parse {:?}", t1.elapsed());
        let got: BTreeMap<String, (String, Vec<String>)> =
            listed.into_iter().map(|(k, s)| (k, (s.kind, s.members))).collect();
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "no other owner's set");
        assert_eq!(got["weft-big"].1.len(), 30_000);
        for (name, w) in &want {
            assert_eq!(&got[name], w, "{name}");
        }
        assert!(got["weft-empty"].1.is_empty());
    })
    .unwrap();
}

/// Members added and deleted over netlink are what `ipset restore` of the
/// same `-exist` lines makes: every type and family weft uses, members
/// already there or already gone, more members than one message holds;
/// a missing set is an error, a member weft never writes is refused.
#[test]
fn netlink_adds_and_deletes_are_what_ipset_restore_does() {
    use weft_netkit::ipset_write::{apply, Change, Op};
    if !root() {
        return;
    }
    run_in_new(|| {
        ipset(
            &["restore"],
            Some(
                "create weft-a hash:ip family inet\nadd weft-a 10.244.1.2\n\
                 create weft-n hash:net family inet\nadd weft-n 10.0.0.0/8\n\
                 create weft-p hash:ip,port family inet\n\
                 create weft-t hash:ip,port,net family inet\n\
                 create weft-t6 hash:ip,port,net family inet6\n\
                 create weft-6 hash:net family inet6\n",
            ),
        );
        let s = |v: &[&str]| v.iter().map(|m| m.to_string()).collect::<Vec<_>>();
        let many: Vec<String> =
            (0..1000).map(|i| format!("10.244.{}.{},tcp:80,10.1.0.0/16", i / 250, i % 250)).collect();
        let (a_add, a_del) =
            (s(&["10.244.1.2", "10.244.1.3", "10.244.1.4"]), s(&["10.244.1.4", "10.244.1.9"]));
        let n_add = s(&["172.16.0.0/12", "192.168.1.1", "0.0.0.0/1"]);
        let n_del = s(&["10.0.0.0/8"]);
        let p_add = s(&["10.244.1.2,tcp:80", "10.244.1.2,udp:53", "10.244.1.2,sctp:9000"]);
        let t6_add = s(&["fd00:244:1::2,tcp:443,fd00::/64", "fd00:244:1::2,udp:53,fd00::9"]);
        let six = s(&["fd00::/48", "fd00:1::1"]);
        let changes = [
            Change { set: "weft-a", op: Op::Add, members: &a_add },
            Change { set: "weft-a", op: Op::Del, members: &a_del },
            Change { set: "weft-n", op: Op::Add, members: &n_add },
            Change { set: "weft-n", op: Op::Del, members: &n_del },
            Change { set: "weft-p", op: Op::Add, members: &p_add },
            Change { set: "weft-t", op: Op::Add, members: &many },
            Change { set: "weft-t6", op: Op::Add, members: &t6_add },
            Change { set: "weft-6", op: Op::Add, members: &six },
        ];
        apply(&changes).unwrap();
        let got = saved();
        let members = |n: &str| got[n].1.clone();
        assert_eq!(members("weft-a"), ["10.244.1.2", "10.244.1.3"]);
        assert_eq!(members("weft-n"), ["0.0.0.0/1", "172.16.0.0/12", "192.168.1.1"]);
        assert_eq!(members("weft-p"), ["10.244.1.2,sctp:9000", "10.244.1.2,tcp:80", "10.244.1.2,udp:53"]);
        assert_eq!(members("weft-t").len(), 1000);
        assert_eq!(members("weft-t6"), ["fd00:244:1::2,tcp:443,fd00::/64", "fd00:244:1::2,udp:53,fd00::9"]);
        assert_eq!(members("weft-6"), ["fd00:1::1", "fd00::/48"]);
        // The netlink listing reads back the same.
        let listed = list_sets("weft-").unwrap();
        assert_eq!(listed["weft-t6"].members, members("weft-t6"));
        // Again, all of it: already there, already gone.
        apply(&changes).unwrap();
        assert_eq!(saved(), got);
        let missing = apply(&[Change { set: "weft-none", op: Op::Add, members: &a_add }]);
        assert!(missing.is_err(), "a set that does not exist");
        let odd = s(&["10.0.0.1,icmp:8"]);
        assert!(apply(&[Change { set: "weft-p", op: Op::Add, members: &odd }]).is_err());
        assert_eq!(saved(), got, "a refused member sends nothing");
    })
    .unwrap();
}
