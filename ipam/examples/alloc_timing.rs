fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "/tmp/ipam-timing".into());
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = weft_ipam::IpamConfig::parse(
        &serde_json::json!({"type":"weft-ipam","ranges":[[{"subnet":"10.244.0.0/22"}]],"dataDir": dir}),
    )
    .unwrap();
    let store = weft_ipam::Store::open(&cfg.data_dir, "weft").unwrap();
    let mut v = vec![];
    for i in 0..300 {
        let t = std::time::Instant::now();
        weft_ipam::allocate(&store, &cfg, &format!("c{i}"), "eth0").unwrap();
        v.push(t.elapsed().as_micros());
    }
    println!("{:?}", &v[..10]);
    println!("{:?}", &v[290..]);
}
