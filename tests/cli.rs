//! The offline commands, run as a user runs them.

use assert_cmd::Command;

fn ringmaster() -> Command {
    Command::cargo_bin("ringmaster").unwrap()
}

#[test]
fn every_example_passes_validate() {
    let out = ringmaster()
        .args(["validate", "examples/rollouts"])
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(
        stdout.starts_with("valid: 4 DeviceRollout and 2 Hub documents"),
        "{stdout}"
    );
}

#[test]
fn validate_lists_every_problem_with_file_and_line_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: ringmaster.dev/v1alpha1\nkind: DeviceRollout\nmetadata: {name: x, namespace: y}\nspec:\n  target: \"tags.a = \"\n  content: {device: {properties.desired.fw: {v: 1}}}\n  rings:\n    - {name: canary, target: \"tags.ring='canary'\"}\n    - {name: canary, target: \"*\"}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("good.yml"),
        std::fs::read_to_string("examples/rollouts/40-network.yaml").unwrap(),
    )
    .unwrap();
    let out = ringmaster()
        .arg("validate")
        .arg(dir.path())
        .assert()
        .code(1);
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(
        stdout.contains("bad.yaml:5"),
        "the target's line is named: {stdout}"
    );
    assert!(stdout.contains("spec.target"), "{stdout}");
    assert!(
        stdout.contains("spec.rings[1].name"),
        "duplicate ring name: {stdout}"
    );
    assert!(stdout.contains("invalid: 2 problems"), "{stdout}");
}

#[test]
fn validate_of_a_missing_file_exits_2() {
    ringmaster()
        .args(["validate", "no/such/file.yaml"])
        .assert()
        .code(2);
}

#[test]
fn crd_prints_both_definitions_as_checked_in() {
    let out = ringmaster().arg("crd").assert().success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    let rollouts = std::fs::read_to_string("crds/devicerollouts.ringmaster.dev.yaml").unwrap();
    let hubs = std::fs::read_to_string("crds/hubs.ringmaster.dev.yaml").unwrap();
    assert!(
        stdout.contains(rollouts.trim()),
        "crds/ is out of date: run UPDATE_CRDS=1 cargo test --lib crds"
    );
    assert!(stdout.contains(hubs.trim()));
}

#[test]
fn run_kube_without_a_cluster_says_so_and_exits_2() {
    let out = ringmaster()
        .args(["run", "--kube", "--leader-election=false"])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env("HOME", "/nonexistent")
        .assert()
        .code(2);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(stderr.contains("cannot reach Kubernetes"), "{stderr}");
}

#[test]
fn device_rings_are_validated_with_file_line_and_field() {
    let out = ringmaster()
        .args(["validate", "examples/rings"])
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(stdout.contains("1 DeviceRings"), "{stdout}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("rings.yaml");
    std::fs::write(
        &bad,
        "apiVersion: ringmaster.dev/v1alpha1\nkind: DeviceRings\nmetadata: {name: x}\nspec:\n  target: \"tags.a=\"\n  rings: [{name: a, percent: 50}]\n  spreadBy: [model]\n",
    )
    .unwrap();
    let out = ringmaster().arg("validate").arg(&bad).assert().code(1);
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(stdout.contains("rings.yaml:5:3: spec.target"), "{stdout}");
    assert!(stdout.contains("percents add up to 50"), "{stdout}");
    assert!(stdout.contains("spec.spreadBy[0]"), "{stdout}");
    let crd = std::fs::read_to_string("crds/devicerings.ringmaster.dev.yaml").unwrap();
    let out = ringmaster().arg("crd").assert().success();
    assert!(String::from_utf8_lossy(&out.get_output().stdout).contains(crd.trim()));
}
