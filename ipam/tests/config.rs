//! `IpamConfig::parse`: both host-local forms, defaults, and every validation error.

use std::path::PathBuf;

use serde_json::{json, Value};
use weft_conf::CniError;
use weft_ipam::{IpamConfig, IpamError, DEFAULT_DATA_DIR};

fn parse(v: Value) -> Result<IpamConfig, IpamError> {
    IpamConfig::parse(&v)
}

fn one_range(r: Value) -> Value {
    json!({"type": "weft-ipam", "ranges": [[r]]})
}

#[test]
fn ranges_form_with_every_field() {
    let c = parse(json!({
        "type": "weft-ipam",
        "ranges": [
            [{"subnet": "10.244.1.0/24", "rangeStart": "10.244.1.10", "rangeEnd": "10.244.1.100",
              "gateway": "10.244.1.254"},
             {"subnet": "10.244.2.0/24"}],
            [{"subnet": "fd00:244:1::/64"}]
        ],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.96.0.0/12", "gw": "10.244.1.1"}],
        "dataDir": "/run/weft-ipam",
        "someUnknownKey": 1
    }))
    .unwrap();
    assert_eq!(c.ipam_type, "weft-ipam");
    assert_eq!(c.data_dir, PathBuf::from("/run/weft-ipam"));
    assert_eq!(c.range_sets.len(), 2);
    assert_eq!(c.range_sets[0].len(), 2);
    let r = &c.range_sets[0][0];
    assert_eq!(r.subnet.to_string(), "10.244.1.0/24");
    assert_eq!(r.range_start, Some("10.244.1.10".parse().unwrap()));
    assert_eq!(r.range_end, Some("10.244.1.100".parse().unwrap()));
    assert_eq!(r.gateway, Some("10.244.1.254".parse().unwrap()));
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[1].gw, Some("10.244.1.1".parse().unwrap()));
}

#[test]
fn defaults_are_filled_in() {
    let c = parse(one_range(json!({"subnet": "10.244.1.0/24"}))).unwrap();
    assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    assert!(c.routes.is_empty());
    let r = &c.range_sets[0][0];
    assert_eq!(r.range_start, Some("10.244.1.1".parse().unwrap()));
    assert_eq!(r.range_end, Some("10.244.1.254".parse().unwrap()));
    assert_eq!(r.gateway, Some("10.244.1.1".parse().unwrap()));
    let c = parse(one_range(json!({"subnet": "fd00::/64"}))).unwrap();
    let r = &c.range_sets[0][0];
    assert_eq!(r.range_start, Some("fd00::1".parse().unwrap()));
    assert_eq!(r.range_end, Some("fd00::ffff:ffff:ffff:ffff".parse().unwrap()), "IPv6 has no broadcast");
    assert_eq!(r.gateway, Some("fd00::1".parse().unwrap()));
}

#[test]
fn legacy_single_range_comes_first() {
    let c = parse(json!({"type": "host-local", "subnet": "10.1.0.0/16", "rangeStart": "10.1.0.10",
                         "gateway": "10.1.255.254", "ranges": [[{"subnet": "fd00::/120"}]]}))
    .unwrap();
    assert_eq!(c.range_sets.len(), 2);
    let r = &c.range_sets[0][0];
    assert_eq!(r.subnet.to_string(), "10.1.0.0/16");
    assert_eq!(r.range_start, Some("10.1.0.10".parse().unwrap()));
    assert_eq!(r.range_end, Some("10.1.255.254".parse().unwrap()));
    assert_eq!(r.gateway, Some("10.1.255.254".parse().unwrap()));
    assert_eq!(c.range_sets[1][0].subnet.to_string(), "fd00::/120");
    let c = parse(json!({"type": "host-local", "subnet": "10.1.0.0/16"})).unwrap();
    assert_eq!(c.range_sets.len(), 1);
}

#[test]
fn smallest_subnets() {
    let c = parse(one_range(json!({"subnet": "10.0.0.0/30"}))).unwrap();
    let r = &c.range_sets[0][0];
    assert_eq!(
        (r.range_start, r.range_end),
        (Some("10.0.0.1".parse().unwrap()), Some("10.0.0.2".parse().unwrap()))
    );
    assert_eq!(r.usable_count(), 1);
    assert!(parse(one_range(json!({"subnet": "fd00::/126"}))).is_ok());
}

/// Every invalid config, the variant it gives, and a word its message must hold.
#[test]
fn every_validation_error() {
    let t = "weft-ipam";
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!("ranges"), "BadField", "JSON object"),
        (json!({"ranges": [[{"subnet": "10.0.0.0/24"}]]}), "BadField", "type is required"),
        (json!({"type": "", "ranges": [[{"subnet": "10.0.0.0/24"}]]}), "BadField", "type is required"),
        (json!({"type": t}), "NoRanges", "no ranges"),
        (json!({"type": t, "ranges": []}), "NoRanges", "no ranges"),
        (json!({"type": t, "ranges": [[]]}), "EmptyRangeSet", "range set 0 is empty"),
        (json!({"type": t, "ranges": [{"subnet": "10.0.0.0/24"}]}), "BadField", "ranges"),
        (json!({"type": t, "rangeStart": "10.0.0.5"}), "BadField", "rangeStart needs a top-level subnet"),
        (one_range(json!({"rangeStart": "10.0.0.5"})), "BadField", "ranges[0][0].subnet is required"),
        (one_range(json!({"subnet": 5})), "BadField", "ranges is malformed"),
        (one_range(json!({"subnet": "10.0.0.0"})), "NotCidr", "\"10.0.0.0\" is not a CIDR"),
        (one_range(json!({"subnet": "10.0.0.0/33"})), "NotCidr", "not a CIDR"),
        (one_range(json!({"subnet": "banana/24"})), "NotCidr", "not a CIDR"),
        (
            one_range(json!({"subnet": "10.244.1.5/24"})),
            "SubnetNotAligned",
            "10.244.1.5/24 has host bits set; did you mean 10.244.1.0/24",
        ),
        (one_range(json!({"subnet": "fd00::1/64"})), "SubnetNotAligned", "did you mean fd00::/64"),
        (one_range(json!({"subnet": "10.0.0.0/31"})), "SubnetTooSmall", "/31 holds 2 addresses"),
        (one_range(json!({"subnet": "10.0.0.0/32"})), "SubnetTooSmall", "/32 holds 1 address"),
        (one_range(json!({"subnet": "fd00::/127"})), "SubnetTooSmall", "subnet-router anycast"),
        (one_range(json!({"subnet": "fd00::/128"})), "SubnetTooSmall", "/128"),
        (
            one_range(json!({"subnet": "10.0.0.0/24", "rangeStart": "nope"})),
            "NotAddress",
            "ranges[0][0].rangeStart \"nope\"",
        ),
        (
            one_range(json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"})),
            "OutsideSubnet",
            "rangeStart 10.0.1.5 is outside subnet 10.0.0.0/24",
        ),
        (
            one_range(json!({"subnet": "10.0.0.0/24", "rangeEnd": "10.0.1.5"})),
            "OutsideSubnet",
            "rangeEnd 10.0.1.5",
        ),
        (
            one_range(json!({"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"})),
            "OutsideSubnet",
            "gateway 10.0.1.1",
        ),
        (
            one_range(json!({"subnet": "10.0.0.0/24", "gateway": "fd00::1"})),
            "OutsideSubnet",
            "gateway fd00::1",
        ),
        (
            one_range(json!({"subnet": "10.0.0.0/24", "gateway": "10.0.0.0"})),
            "GatewayNotHost",
            "network address",
        ),
        (
            one_range(json!({"subnet": "10.0.0.0/24", "gateway": "10.0.0.255"})),
            "GatewayNotHost",
            "broadcast address",
        ),
        (
            one_range(json!({"subnet": "fd00::/64", "gateway": "fd00::"})),
            "GatewayNotHost",
            "subnet-router anycast",
        ),
        (
            one_range(json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.3"})),
            "StartAfterEnd",
            "rangeStart 10.0.0.9 is after rangeEnd 10.0.0.3",
        ),
        (
            one_range(json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.255"})),
            "StartAfterEnd",
            "after rangeEnd 10.0.0.254",
        ),
        (
            one_range(json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.1", "rangeEnd": "10.0.0.1"})),
            "NoUsableAddress",
            "10.0.0.0/24 [10.0.0.1-10.0.0.1]",
        ),
        (one_range(json!({"subnet": "10.0.0.0/30", "gateway": "10.0.0.2"})), "OK", ""),
        (
            json!({"type": t, "ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/25"}]]}),
            "Overlap",
            "10.0.0.0/24 [10.0.0.1-10.0.0.254] overlaps range 10.0.0.0/25",
        ),
        (
            json!({"type": t, "ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.100"},
                                        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.100"}]]}),
            "Overlap",
            "overlaps",
        ),
        (
            json!({"type": t, "subnet": "10.0.0.0/16", "ranges": [[{"subnet": "10.0.5.0/24"}]]}),
            "Overlap",
            "overlaps",
        ),
        (
            json!({"type": t, "ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}),
            "MixedFamilies",
            "range set 0 mixes",
        ),
        (
            json!({"type": t, "ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"dst": "x"}]}),
            "BadField",
            "routes",
        ),
        (
            json!({"type": t, "ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": {"dst": "0.0.0.0/0"}}),
            "BadField",
            "routes",
        ),
        (
            json!({"type": t, "ranges": [[{"subnet": "10.0.0.0/24"}]], "dataDir": ""}),
            "BadField",
            "dataDir is empty",
        ),
        (
            json!({"type": t, "ranges": [[{"subnet": "10.0.0.0/24"}]], "dataDir": 3}),
            "BadField",
            "ipam is malformed",
        ),
    ];
    for (input, variant, words) in cases {
        let got = parse(input.clone());
        if variant == "OK" {
            assert!(got.is_ok(), "{input}: {got:?}");
            continue;
        }
        let e = got.expect_err(&input.to_string());
        let dbg = format!("{e:?}");
        assert!(dbg.starts_with(variant), "{input}: want {variant}, got {dbg}");
        let msg = e.to_string();
        assert!(msg.contains(words), "{input}: message {msg:?} lacks {words:?}");
        assert_eq!(CniError::from(e).code, 7, "{input}");
    }
}

#[test]
fn disjoint_ranges_of_one_subnet_are_fine() {
    let c = parse(json!({"type": "weft-ipam", "ranges": [
        [{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.99"}],
        [{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.100"}],
        [{"subnet": "fd00::/64"}]]}))
    .unwrap();
    assert_eq!(c.range_sets.len(), 3);
}
