//! Quick fast-path check: `cargo run --release -p devlife-gate --example fastpath`.
//! (The full comparison is `devlife bench gate`.)
use devlife_gate::Gate;
use std::hint::black_box;
use std::time::Instant;

fn main() {
    let gate = Gate::new();
    let n = 200_000_000u64;
    for threads in [1, 2] {
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..n {
                        black_box(gate.try_enter());
                    }
                });
            }
        });
        let ns = t0.elapsed().as_nanos() as f64 / n as f64;
        println!("threads={threads} ns/op={ns:.3} asymmetric={}", devlife_gate::barrier::is_asymmetric());
    }
}

#[allow(dead_code)]
fn floor() {}
