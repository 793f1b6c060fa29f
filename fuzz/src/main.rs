//! `slate-fuzz TARGET`: run one fuzz target under AFL++ (`cargo afl fuzz
//! ... -- slate-fuzz TARGET`), or once on standard input when started
//! without AFL (to replay a crash). `slate-fuzz --list` prints the targets;
//! `slate-fuzz --make-seeds REPO OUT` writes the seed corpus (`make-seeds.sh`).

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    if name == "--list" {
        for (n, _) in slate_fuzz::TARGETS {
            println!("{n}");
        }
        return;
    }
    if name == "--make-seeds" {
        let arg = |i| std::path::PathBuf::from(std::env::args().nth(i).unwrap_or_default());
        if let Err(e) = slate_fuzz::seeds::make(&arg(2), &arg(3)) {
            eprintln!("slate-fuzz: cannot make the seeds: {e}");
            std::process::exit(1);
        }
        return;
    }
    let Some(target) = slate_fuzz::target(&name) else {
        eprintln!("slate-fuzz: unknown target {name:?} (slate-fuzz --list names them)");
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| target(data));
}
