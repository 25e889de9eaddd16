//! Prints the machine's read bandwidth and AVX-512 VNNI peak with 1 and 2 threads.

fn main() {
    use llmc_backends::cpu::machine::{read_bandwidth, vnni_peak};
    for t in [1, 2] {
        let bw = read_bandwidth(1 << 30, t, 5);
        let vnni = vnni_peak(t).map_or("n/a (no AVX-512 VNNI)".to_string(), |g| {
            format!("{g:.0} GOPS")
        });
        println!("threads {t}: read bandwidth {bw:.1} GB/s, int8 vpdpbusd peak {vnni}");
    }
}
