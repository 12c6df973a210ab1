//! Files laid out as the kubelet lays them out on a node.
use std::path::Path;

/// Writes generation `generation` of a ConfigMap or Secret volume into `dir`, as the kubelet's
/// atomic writer does: `key -> ..data/key`, `..data -> <generation>/`, and a new generation
/// swaps `..data` in one rename.
pub fn kubelet_volume(dir: &Path, generation: &str, files: &[(&str, &str)]) {
    let data = dir.join(generation);
    std::fs::create_dir_all(&data).expect("data dir");
    for (k, v) in files {
        std::fs::write(data.join(k), v).expect("key");
        let link = dir.join(k);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("..data/{k}"), &link).expect("key link");
        }
    }
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(generation, &tmp).expect("tmp link");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
}
