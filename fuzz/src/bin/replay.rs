//! Runs a target over files, without AFL: `replay <target> <file or directory>...`.
//! A panic names the input that caused it. Used by
//! `scripts/fuzz` to replay the corpora and to reproduce a crash (see fuzz/README.md).
use std::path::{Path, PathBuf};
use std::sync::Mutex;

fn files(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .map(|e| e.expect("a directory entry").path())
            .collect();
        entries.sort();
        for e in entries {
            files(&e, out);
        }
    } else {
        out.push(p.to_path_buf());
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let names: Vec<&str> = ringmaster_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    let usage = format!("usage: replay <{}> <file or directory>...", names.join("|"));
    let name = args.next().unwrap_or_else(|| panic!("{usage}"));
    let target = ringmaster_fuzz::target(&name).unwrap_or_else(|| panic!("{usage}"));
    let mut list = Vec::new();
    for a in args {
        files(Path::new(&a), &mut list);
    }
    static CURRENT: Mutex<String> = Mutex::new(String::new());
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let current = CURRENT.lock().map(|c| c.clone()).unwrap_or_default();
        eprintln!("replay: the input {current} made the target panic:");
        default_hook(info);
    }));
    for f in &list {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if let Ok(mut c) = CURRENT.lock() {
            *c = f.display().to_string();
        }
        target(&data);
    }
    println!("{name}: {} inputs, no crash", list.len());
}
