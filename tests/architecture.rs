//! The crate's shape: modules in layers, each importing only from layers below it, so the
//! import graph has no cycle. Read from the source (`crate::` paths outside comments), the
//! way a reviewer would check it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules, lowest layer first. A module may use modules of lower layers only.
const LAYERS: &[&[&str]] = &[
    // Leaves: no crate imports, or only each other's below.
    &[
        "secret",
        "routes",
        "metrics",
        "telemetry",
        "shutdown",
        "upstream",
        "upkeep",
    ],
    &["config", "token"],
    // One step of the request path each, over the leaves.
    &["budget", "cache", "tls", "pool", "inbound"],
    &["admission"],
    &["generation"],
    &["reload", "proxy", "server"],
    &["admin"],
    // The composition root, and the simulator (not on the proxy path).
    &["app", "sim"],
    &["demo"],
    &["cli"],
];

/// `crate::` imports of every top-level module: module → modules it names.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&src) {
        let relative = file.strip_prefix(&src).expect("under src");
        let module = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|c| c.trim_end_matches(".rs").to_owned())
            .expect("a file name");
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable source");
        let used = graph.entry(module.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or_default();
            for (at, _) in code.match_indices("crate::") {
                let name: String = code[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    used.insert(name);
                }
            }
        }
    }
    graph
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

#[test]
fn every_module_imports_only_from_layers_below() {
    let graph = imports();
    assert!(
        graph.len() >= 20,
        "the scan found the crate's modules: {graph:?}"
    );
    let mut wrong = Vec::new();
    for (module, used) in &graph {
        let Some(level) = layer_of(module) else {
            wrong.push(format!("{module} is in no layer of LAYERS: add it"));
            continue;
        };
        for target in used {
            match layer_of(target) {
                Some(below) if below < level => {}
                Some(_) => wrong.push(format!(
                    "{module} (layer {level}) imports {target}, which is not below it"
                )),
                None => wrong.push(format!("{module} imports {target}, which is in no layer")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_import_graph_has_no_cycle() {
    let graph = imports();
    // Depth-first search; a module met again while on the path closes a cycle.
    fn visit<'a>(
        module: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| *m == module) {
            let mut cycle: Vec<String> = path[at..].iter().map(|m| (*m).to_owned()).collect();
            cycle.push(module.to_owned());
            return Some(cycle);
        }
        if !done.insert(module) {
            return None;
        }
        path.push(module);
        for next in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(cycle) = visit(module, &graph, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
}
