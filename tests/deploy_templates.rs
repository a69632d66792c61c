//! The Azure deployment artifacts, checked without an Azure subscription: the ARM
//! template deploy/azure/azuredeploy.json (parsed with serde_json), the cloud-init
//! files deploy/cloud-init/{coordinator,worker}.yaml (as far as std can read them)
//! and deploy/Dockerfile. Every assertion names the file and the property.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const TEMPLATE: &str = "deploy/azure/azuredeploy.json";
const COORDINATOR_INIT: &str = "deploy/cloud-init/coordinator.yaml";
const WORKER_INIT: &str = "deploy/cloud-init/worker.yaml";
const DOCKERFILE: &str = "deploy/Dockerfile";

const VMSS: &str = "Microsoft.Compute/virtualMachineScaleSets";
const VM: &str = "Microsoft.Compute/virtualMachines";
const NSG: &str = "Microsoft.Network/networkSecurityGroups";
const STORAGE: &str = "Microsoft.Storage/storageAccounts";
const ROLE: &str = "Microsoft.Authorization/roleAssignments";
/// Built-in role "Virtual Machine Contributor".
const VM_CONTRIBUTOR_ID: &str = "9980e02c-c2be-4d73-94e8-173b1dc7cf3c";
/// What the coordinator's autoscaler will call (ARM REST).
const SCALE_SET_API: &str = "2024-07-01";
const SCHEDULED_EVENTS: &str =
    "http://169.254.169.254/metadata/scheduledevents?api-version=2020-07-01";

fn read(rel: &str) -> String {
    let p = PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{rel}: cannot read: {e}"))
}

fn template() -> Value {
    serde_json::from_str(&read(TEMPLATE)).unwrap_or_else(|e| panic!("{TEMPLATE}: not JSON: {e}"))
}

fn resources<'a>(t: &'a Value, ty: &str) -> Vec<&'a Value> {
    t["resources"]
        .as_array()
        .unwrap_or_else(|| panic!("{TEMPLATE}: resources is not an array"))
        .iter()
        .filter(|r| r["type"].as_str() == Some(ty))
        .collect()
}

fn one<'a>(t: &'a Value, ty: &str) -> &'a Value {
    let found = resources(t, ty);
    assert_eq!(
        found.len(),
        1,
        "{TEMPLATE}: expected exactly one resource of type {ty}, found {}",
        found.len()
    );
    found[0]
}

/// The value at a JSON pointer, or a failure naming the file, the resource and the property.
fn at<'a>(v: &'a Value, pointer: &str, what: &str) -> &'a Value {
    v.pointer(pointer)
        .unwrap_or_else(|| panic!("{TEMPLATE}: {what}: property {pointer} is missing"))
}

fn text<'a>(v: &'a Value, pointer: &str, what: &str) -> &'a str {
    at(v, pointer, what)
        .as_str()
        .unwrap_or_else(|| panic!("{TEMPLATE}: {what}: property {pointer} is not a string"))
}

/// The inner expression of "[expr]", or None for a literal string.
fn expression(s: &str) -> Option<&str> {
    s.strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .filter(|e| !e.starts_with('['))
}

/// The arguments of `name(...)` when `expr` is exactly that call, split at top-level commas.
fn call_args(expr: &str, name: &str) -> Option<Vec<String>> {
    let inner = expr
        .trim()
        .strip_prefix(name)?
        .strip_prefix('(')?
        .strip_suffix(')')?;
    let (mut args, mut cur, mut depth, mut quoted) = (Vec::new(), String::new(), 0i32, false);
    for c in inner.chars() {
        match c {
            '\'' => quoted = !quoted,
            '(' | '[' if !quoted => depth += 1,
            ')' | ']' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                args.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        args.push(cur.trim().to_string());
    }
    Some(args)
}

/// Names used as `fname('x')` anywhere in `s`.
fn references(s: &str, fname: &str) -> BTreeSet<String> {
    let needle = format!("{fname}('");
    let mut out = BTreeSet::new();
    let mut rest = s;
    while let Some(i) = rest.find(&needle) {
        let after = &rest[i + needle.len()..];
        let end = after.find('\'').unwrap_or(after.len());
        // `parameters('x')` but not e.g. `myparameters('x')`.
        let prev = rest[..i].chars().last();
        if !prev.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(after[..end].to_string());
        }
        rest = &after[end..];
    }
    out
}

/// `__NAME__` placeholders (capitals, digits, single underscores) not glued to a word.
fn placeholders(s: &str) -> BTreeSet<String> {
    let b = s.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'_' && b[i + 1] == b'_' && (i == 0 || !word(b[i - 1])) {
            let mut j = i + 2;
            while j < b.len()
                && (b[j].is_ascii_uppercase() || b[j].is_ascii_digit() || b[j] == b'_')
            {
                j += 1;
            }
            let tok = &s[i + 2..j];
            if let Some(inner) = tok.strip_suffix("__") {
                if !inner.is_empty()
                    && inner.as_bytes()[0].is_ascii_uppercase()
                    && !inner.contains("__")
                    && !inner.ends_with('_')
                {
                    out.insert(format!("__{inner}__"));
                    i = j;
                    continue;
                }
            }
        }
        i += 1;
    }
    out
}

fn port_covered(range: &str, port: u32) -> bool {
    let r = range.trim();
    if r == "*" {
        return true;
    }
    match r.split_once('-') {
        Some((a, b)) => match (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
            (Ok(a), Ok(b)) => a <= port && port <= b,
            _ => true, // an expression: assume the worst
        },
        None => r.parse::<u32>().map(|p| p == port).unwrap_or(true),
    }
}

/// A rule property that may be given as `x` or as the array `xs`.
fn rule_values(props: &Value, single: &str, plural: &str) -> Vec<String> {
    let mut v: Vec<String> = props[single]
        .as_str()
        .map(|s| vec![s.to_string()])
        .unwrap_or_default();
    if let Some(a) = props[plural].as_array() {
        v.extend(a.iter().filter_map(|x| x.as_str().map(str::to_string)));
    }
    v
}

#[test]
fn scale_set_is_spot_delete_and_starts_at_zero() {
    let t = template();
    let ss = one(&t, VMSS);
    let what = "worker scale set";
    assert_eq!(
        text(ss, "/apiVersion", what),
        SCALE_SET_API,
        "{TEMPLATE}: {what}: apiVersion must be the one the autoscaler calls"
    );
    assert_eq!(
        at(ss, "/sku/capacity", what).as_i64(),
        Some(0),
        "{TEMPLATE}: {what}: sku.capacity must start at 0"
    );
    let p = "/properties/virtualMachineProfile";
    assert_eq!(
        text(ss, &format!("{p}/priority"), what),
        "Spot",
        "{TEMPLATE}: {what}: virtualMachineProfile.priority"
    );
    assert_eq!(
        text(ss, &format!("{p}/evictionPolicy"), what),
        "Delete",
        "{TEMPLATE}: {what}: virtualMachineProfile.evictionPolicy"
    );
    assert_eq!(
        at(ss, &format!("{p}/billingProfile/maxPrice"), what).as_f64(),
        Some(-1.0),
        "{TEMPLATE}: {what}: virtualMachineProfile.billingProfile.maxPrice must be -1 (never evicted for price)"
    );
    assert_eq!(
        text(ss, "/properties/orchestrationMode", what),
        "Uniform",
        "{TEMPLATE}: {what}: properties.orchestrationMode"
    );
    assert_eq!(at(ss, "/properties/overprovision", what).as_bool(), Some(false), "{TEMPLATE}: {what}: properties.overprovision (extra Spot VMs would be created and deleted)");
    assert_eq!(
        text(ss, "/sku/name", what),
        "[parameters('workerVmSize')]",
        "{TEMPLATE}: {what}: sku.name"
    );
    assert_eq!(
        text(
            &t,
            "/parameters/workerVmSize/defaultValue",
            "parameter workerVmSize"
        ),
        "Standard_NC4as_T4_v3",
        "{TEMPLATE}: parameters.workerVmSize.defaultValue"
    );
    let ext = at(ss, &format!("{p}/extensionProfile/extensions"), what)
        .as_array()
        .unwrap_or_else(|| {
            panic!("{TEMPLATE}: {what}: extensionProfile.extensions is not an array")
        });
    assert!(
        ext.iter().any(|e| e["properties"]["publisher"] == "Microsoft.HpcCompute" && e["properties"]["type"] == "NvidiaGpuDriverLinux"),
        "{TEMPLATE}: {what}: extensionProfile.extensions lacks the NVIDIA GPU driver extension (Microsoft.HpcCompute/NvidiaGpuDriverLinux)"
    );
    assert_eq!(
        at(ss, &format!("{p}/scheduledEventsProfile/terminateNotificationProfile/enable"), what).as_bool(),
        Some(true),
        "{TEMPLATE}: {what}: scheduledEventsProfile.terminateNotificationProfile.enable (workers drain on scale-in)"
    );
    let custom = text(ss, &format!("{p}/osProfile/customData"), what);
    assert!(
        custom.starts_with("[base64(") && custom.contains("parameters('workerCloudInit')"),
        "{TEMPLATE}: {what}: osProfile.customData must be base64 of parameter workerCloudInit, got {custom}"
    );
}

#[test]
fn nsg_keeps_the_coordinator_ports_off_the_internet() {
    let t = template();
    let nsg = one(&t, NSG);
    let rules = at(nsg, "/properties/securityRules", "network security group")
        .as_array()
        .unwrap_or_else(|| {
            panic!("{TEMPLATE}: network security group: securityRules is not an array")
        });
    let open = ["*", "internet", "any", "0.0.0.0/0", "::/0"];
    let mut vnet_allowed = BTreeSet::new();
    let mut internet_denied = false;
    for r in rules {
        let name = r["name"].as_str().unwrap_or("?");
        let p = &r["properties"];
        let inbound = p["direction"]
            .as_str()
            .is_some_and(|d| d.eq_ignore_ascii_case("Inbound"));
        let allow = p["access"]
            .as_str()
            .is_some_and(|a| a.eq_ignore_ascii_case("Allow"));
        let sources = rule_values(p, "sourceAddressPrefix", "sourceAddressPrefixes");
        let ports = rule_values(p, "destinationPortRange", "destinationPortRanges");
        assert!(
            !sources.is_empty() && !ports.is_empty(),
            "{TEMPLATE}: security rule {name}: needs a source prefix and a destination port range"
        );
        if inbound
            && !allow
            && sources.iter().any(|s| s.eq_ignore_ascii_case("Internet"))
            && ports.iter().any(|r| r == "*")
        {
            internet_denied = true;
        }
        if !(inbound && allow) {
            continue;
        }
        for port in [50051, 8080] {
            if !ports.iter().any(|r| port_covered(r, port)) {
                continue;
            }
            for s in &sources {
                assert!(
                    !open.contains(&s.to_ascii_lowercase().as_str()),
                    "{TEMPLATE}: security rule {name}: allows port {port} inbound from {s}"
                );
                assert_eq!(s, "VirtualNetwork", "{TEMPLATE}: security rule {name}: port {port} must be open to the VirtualNetwork service tag only");
            }
            vnet_allowed.insert(port);
        }
        if ports.iter().any(|r| port_covered(r, 22)) {
            assert_eq!(
                sources,
                vec!["[parameters('adminSourcePrefix')]".to_string()],
                "{TEMPLATE}: security rule {name}: SSH only from parameter adminSourcePrefix"
            );
        }
    }
    assert_eq!(vnet_allowed, BTreeSet::from([8080, 50051]), "{TEMPLATE}: network security group: 50051 and 8080 must each be allowed from VirtualNetwork");
    assert!(
        internet_denied,
        "{TEMPLATE}: network security group: no inbound Deny rule for source Internet on all ports"
    );
    assert!(
        t["parameters"]["adminSourcePrefix"].get("defaultValue").is_none(),
        "{TEMPLATE}: parameters.adminSourcePrefix must have no default (the deployer names their own address)"
    );
    let vnet = one(&t, "Microsoft.Network/virtualNetworks");
    let subnets = at(vnet, "/properties/subnets", "virtual network")
        .as_array()
        .expect("subnets array");
    assert_eq!(
        subnets.len(),
        1,
        "{TEMPLATE}: virtual network: properties.subnets must hold one subnet"
    );
    assert!(
        text(&subnets[0], "/properties/networkSecurityGroup/id", "subnet")
            .contains("Microsoft.Network/networkSecurityGroups"),
        "{TEMPLATE}: subnet: properties.networkSecurityGroup.id must name the NSG"
    );
}

#[test]
fn storage_accounts_are_https_only_tls12_and_private() {
    let t = template();
    let accounts = resources(&t, STORAGE);
    assert_eq!(
        accounts.len(),
        2,
        "{TEMPLATE}: expected two storage accounts (data; logs and scripts), found {}",
        accounts.len()
    );
    for a in &accounts {
        let what = format!("storage account {}", a["name"]);
        let p = &a["properties"];
        assert_eq!(
            p["supportsHttpsTrafficOnly"].as_bool(),
            Some(true),
            "{TEMPLATE}: {what}: properties.supportsHttpsTrafficOnly"
        );
        assert_eq!(
            p["minimumTlsVersion"].as_str(),
            Some("TLS1_2"),
            "{TEMPLATE}: {what}: properties.minimumTlsVersion"
        );
        assert_eq!(
            p["allowBlobPublicAccess"].as_bool(),
            Some(false),
            "{TEMPLATE}: {what}: properties.allowBlobPublicAccess"
        );
    }
    assert!(
        accounts.iter().any(|a| a["properties"]["networkAcls"]["defaultAction"] == "Deny"),
        "{TEMPLATE}: the logs/scripts storage account must deny by default (properties.networkAcls.defaultAction)"
    );
    for c in resources(
        &t,
        "Microsoft.Storage/storageAccounts/blobServices/containers",
    ) {
        assert_eq!(
            c["properties"]["publicAccess"].as_str(),
            Some("None"),
            "{TEMPLATE}: container {}: properties.publicAccess",
            c["name"]
        );
    }
}

#[test]
fn coordinator_has_a_static_ip_a_data_disk_and_may_scale_the_workers() {
    let t = template();
    let vm = one(&t, VM);
    let what = "coordinator VM";
    assert_eq!(
        text(vm, "/identity/type", what),
        "SystemAssigned",
        "{TEMPLATE}: {what}: identity.type"
    );
    let image = at(vm, "/properties/storageProfile/imageReference", what);
    let image = match image.as_str().and_then(expression) {
        Some(e) => {
            let name = references(e, "variables")
                .into_iter()
                .next()
                .expect("imageReference variable");
            &t["variables"][name.as_str()]
        }
        None => image,
    };
    assert!(
        image["publisher"] == "Canonical" && image["offer"].as_str().is_some_and(|o| o.contains("jammy")),
        "{TEMPLATE}: {what}: storageProfile.imageReference must be Ubuntu 22.04 (Canonical, jammy), got {image}"
    );
    let disks = at(vm, "/properties/storageProfile/dataDisks", what)
        .as_array()
        .expect("dataDisks array");
    assert!(disks.iter().any(|d| d["lun"] == 0), "{TEMPLATE}: {what}: storageProfile.dataDisks needs LUN 0 (cloud-init mounts it for the sled state)");
    let custom = text(vm, "/properties/osProfile/customData", what);
    assert!(
        custom.starts_with("[base64(") && custom.contains("parameters('coordinatorCloudInit')"),
        "{TEMPLATE}: {what}: osProfile.customData must be base64 of parameter coordinatorCloudInit"
    );
    let nic = one(&t, "Microsoft.Network/networkInterfaces");
    let ip = at(
        nic,
        "/properties/ipConfigurations/0/properties",
        "coordinator NIC",
    );
    assert_eq!(
        ip["privateIPAllocationMethod"].as_str(),
        Some("Static"),
        "{TEMPLATE}: coordinator NIC: ipConfigurations[0].privateIPAllocationMethod"
    );
    assert_eq!(
        ip["privateIPAddress"].as_str(),
        Some("[parameters('coordinatorPrivateIp')]"),
        "{TEMPLATE}: coordinator NIC: ipConfigurations[0].privateIPAddress (the workers' cloud-init gets the same parameter)"
    );

    let ss_name = text(one(&t, VMSS), "/name", "worker scale set");
    let ss_name = expression(ss_name).unwrap_or(ss_name);
    let vm_name = text(vm, "/name", what);
    let vm_name = expression(vm_name).unwrap_or(vm_name);
    let grant = resources(&t, ROLE).into_iter().find(|r| {
        let role = r["properties"]["roleDefinitionId"].as_str().unwrap_or("");
        let role = match expression(role) {
            Some(e) => {
                references(e, "variables")
                    .iter()
                    .map(|v| {
                        t["variables"][v.as_str()]
                            .as_str()
                            .unwrap_or("")
                            .to_string()
                    })
                    .collect::<String>()
                    + e
            }
            None => role.to_string(),
        };
        role.contains(VM_CONTRIBUTOR_ID)
    });
    let grant = grant.unwrap_or_else(|| panic!("{TEMPLATE}: no roleAssignments resource grants Virtual Machine Contributor ({VM_CONTRIBUTOR_ID})"));
    let scope = text(grant, "/scope", "Virtual Machine Contributor assignment");
    assert!(
        scope.contains(VMSS) && scope.contains(ss_name),
        "{TEMPLATE}: Virtual Machine Contributor assignment: scope must be the worker scale set ({ss_name}), got {scope}"
    );
    let principal = text(
        grant,
        "/properties/principalId",
        "Virtual Machine Contributor assignment",
    );
    assert!(
        principal.contains("reference(") && principal.contains(VM) && principal.contains(vm_name) && principal.contains("identity.principalId"),
        "{TEMPLATE}: Virtual Machine Contributor assignment: properties.principalId must be the coordinator VM's identity, got {principal}"
    );
    assert_eq!(
        text(
            grant,
            "/properties/principalType",
            "Virtual Machine Contributor assignment"
        ),
        "ServicePrincipal",
        "{TEMPLATE}: Virtual Machine Contributor assignment: properties.principalType"
    );
}

#[test]
fn template_expressions_name_declared_things() {
    let raw = read(TEMPLATE);
    let t = template();
    let declared = |section: &str| -> BTreeSet<String> {
        t[section]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let params = declared("parameters");
    let vars = declared("variables");
    let used_params = references(&raw, "parameters");
    let used_vars = references(&raw, "variables");
    for p in &used_params {
        assert!(
            params.contains(p),
            "{TEMPLATE}: parameters('{p}') is used but parameters.{p} is not declared"
        );
    }
    for p in &params {
        assert!(
            used_params.contains(p),
            "{TEMPLATE}: parameters.{p} is declared but never used"
        );
    }
    for v in &used_vars {
        assert!(
            vars.contains(v),
            "{TEMPLATE}: variables('{v}') is used but variables.{v} is not declared"
        );
    }
    for v in &vars {
        assert!(
            used_vars.contains(v),
            "{TEMPLATE}: variables.{v} is declared but never used"
        );
    }

    // Every dependsOn entry is [resourceId('Type', name)] of a resource defined here.
    let all = t["resources"].as_array().expect("resources array");
    let defined: BTreeSet<(String, String)> = all
        .iter()
        .map(|r| {
            let name = r["name"].as_str().unwrap_or("");
            let name = expression(name)
                .map(str::to_string)
                .unwrap_or_else(|| format!("'{name}'"));
            (r["type"].as_str().unwrap_or("").to_string(), name)
        })
        .collect();
    for r in all {
        let who = format!("{} {}", r["type"].as_str().unwrap_or("?"), r["name"]);
        assert!(
            r["apiVersion"].is_string(),
            "{TEMPLATE}: {who}: apiVersion is missing"
        );
        for d in r["dependsOn"].as_array().into_iter().flatten() {
            let d = d.as_str().unwrap_or_else(|| {
                panic!("{TEMPLATE}: {who}: dependsOn entry {d} is not a string")
            });
            let args = expression(d)
                .and_then(|e| call_args(e, "resourceId"))
                .unwrap_or_else(|| {
                    panic!("{TEMPLATE}: {who}: dependsOn entry {d} is not [resourceId(...)]")
                });
            assert_eq!(
                args.len(),
                2,
                "{TEMPLATE}: {who}: dependsOn entry {d}: expected resourceId('Type', name)"
            );
            let ty = args[0].trim_matches('\'').to_string();
            assert!(
                defined.contains(&(ty.clone(), args[1].clone())),
                "{TEMPLATE}: {who}: dependsOn entry {d} names no resource of this template"
            );
        }
    }
}

/// One `write_files` entry of a cloud-init file.
#[derive(Debug, Default)]
struct WriteFile {
    path: String,
    owner: String,
    permissions: String,
    content: String,
}

/// The `write_files` entries, as deploy/cloud-init writes them: `  - path:` items with
/// `    key: value` properties and a `content: |` block indented by six spaces.
fn write_files(file: &str, yaml: &str) -> Vec<WriteFile> {
    let lines: Vec<&str> = yaml.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == "write_files:")
        .unwrap_or_else(|| panic!("{file}: no top-level write_files"));
    let mut out: Vec<WriteFile> = Vec::new();
    let mut i = start + 1;
    while i < lines.len() {
        let l = lines[i];
        if !l.is_empty() && !l.starts_with(' ') && !l.starts_with('#') {
            break;
        }
        if let Some(path) = l.strip_prefix("  - path: ") {
            out.push(WriteFile {
                path: path.trim().to_string(),
                ..Default::default()
            });
        } else if let Some(prop) = l
            .strip_prefix("    ")
            .filter(|p| !p.starts_with(' ') && !p.is_empty())
        {
            let entry = out
                .last_mut()
                .unwrap_or_else(|| panic!("{file}: line {}: property before any - path:", i + 1));
            let (k, v) = prop
                .split_once(':')
                .unwrap_or_else(|| panic!("{file}: line {}: expected key: value", i + 1));
            let v = v.trim().trim_matches('\'').trim_matches('"').to_string();
            match k {
                "owner" => entry.owner = v,
                "permissions" => entry.permissions = v,
                "content" => {
                    assert_eq!(
                        v, "|",
                        "{file}: write_files {}: content must be a literal block (|)",
                        entry.path
                    );
                    let mut body = Vec::new();
                    while i + 1 < lines.len()
                        && (lines[i + 1].starts_with("      ") || lines[i + 1].trim().is_empty())
                    {
                        i += 1;
                        body.push(lines[i].get(6..).unwrap_or(""));
                    }
                    entry.content = body.join("\n").trim_end().to_string() + "\n";
                }
                other => panic!(
                    "{file}: write_files {}: unexpected property {other}",
                    entry.path
                ),
            }
        } else if !l.trim().is_empty() && !l.trim_start().starts_with('#') {
            panic!("{file}: line {}: unexpected in write_files: {l}", i + 1);
        }
        i += 1;
    }
    out
}

fn file_named<'a>(file: &str, files: &'a [WriteFile], path: &str) -> &'a WriteFile {
    files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("{file}: write_files has no {path}"))
}

/// The values of `key=` lines of a systemd unit.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .collect()
}

/// Checks what both cloud-init files share and returns their write_files.
fn cloud_init(file: &str) -> (String, Vec<WriteFile>) {
    let yaml = read(file);
    assert!(
        yaml.starts_with("#cloud-config\n"),
        "{file}: must start with #cloud-config"
    );
    assert!(
        !yaml.contains('\t'),
        "{file}: YAML may not be indented with tabs"
    );
    let known = [
        "package_update",
        "package_upgrade",
        "packages",
        "write_files",
        "runcmd",
        "bootcmd",
        "disk_setup",
        "fs_setup",
        "mounts",
    ];
    let mut seen = BTreeSet::new();
    for (n, l) in yaml.lines().enumerate() {
        if l.is_empty() || l.starts_with(' ') || l.starts_with('#') {
            continue;
        }
        let key = l
            .split_once(':')
            .map(|(k, _)| k)
            .unwrap_or_else(|| panic!("{file}: line {}: top-level line is not key:", n + 1));
        assert!(
            known.contains(&key),
            "{file}: line {}: unknown top-level cloud-init key {key}",
            n + 1
        );
        assert!(
            seen.insert(key.to_string()),
            "{file}: top-level key {key} appears twice"
        );
    }
    for k in ["packages", "write_files", "runcmd"] {
        assert!(seen.contains(k), "{file}: no top-level {k}");
    }
    let files = write_files(file, &yaml);
    for f in &files {
        assert!(
            f.path.starts_with('/'),
            "{file}: write_files {}: path must be absolute",
            f.path
        );
        assert_eq!(
            f.owner, "root:root",
            "{file}: write_files {}: owner",
            f.path
        );
        assert!(
            f.permissions.len() == 4 && f.permissions.starts_with('0'),
            "{file}: write_files {}: permissions must be like '0644', got {}",
            f.path,
            f.permissions
        );
        assert!(
            !f.content.trim().is_empty(),
            "{file}: write_files {}: empty content",
            f.path
        );
    }
    let wrapper = file_named(file, &files, "/usr/local/bin/framewise");
    assert!(
        wrapper.content.contains("exec docker") && wrapper.content.contains("\"$@\"") && wrapper.content.contains("--network host"),
        "{file}: write_files /usr/local/bin/framewise must exec the image with docker (host network) and pass its arguments"
    );
    let image = file_named(file, &files, "/etc/framewise/image.env");
    assert!(
        image.content.contains("__FRAMEWISE_IMAGE__"),
        "{file}: /etc/framewise/image.env must take the image from the template"
    );
    assert!(
        yaml.contains("docker.io"),
        "{file}: packages must install docker.io"
    );
    (yaml, files)
}

fn unit_exec_start(file: &str, files: &[WriteFile], unit: &str) -> (String, String) {
    let u = file_named(file, files, unit);
    let exec = unit_values(&u.content, "ExecStart");
    assert_eq!(exec.len(), 1, "{file}: {unit}: expected one ExecStart=");
    let restart = unit_values(&u.content, "Restart");
    assert_eq!(restart.len(), 1, "{file}: {unit}: expected one Restart=");
    assert!(
        unit_values(&u.content, "WantedBy").contains(&"multi-user.target"),
        "{file}: {unit}: [Install] WantedBy=multi-user.target"
    );
    (exec[0].to_string(), restart[0].to_string())
}

/// The placeholders the template replaces in the customData of the resource of type `ty`.
fn substituted(ty: &str) -> BTreeSet<String> {
    let t = template();
    let r = one(&t, ty);
    let p = if ty == VMSS {
        "/properties/virtualMachineProfile/osProfile/customData"
    } else {
        "/properties/osProfile/customData"
    };
    placeholders(text(r, p, ty))
}

#[test]
fn coordinator_cloud_init_runs_the_coordinator_unit() {
    let file = COORDINATOR_INIT;
    let (yaml, files) = cloud_init(file);
    let unit = "/etc/systemd/system/framewise-coordinator.service";
    let (exec, restart) = unit_exec_start(file, &files, unit);
    assert_eq!(
        exec, "/usr/local/bin/framewise coordinator -c /etc/framewise/coordinator.toml",
        "{file}: {unit}: ExecStart"
    );
    assert_eq!(restart, "always", "{file}: {unit}: Restart");
    assert!(
        yaml.contains("[systemctl, enable, framewise-coordinator.service]"),
        "{file}: runcmd must enable framewise-coordinator.service"
    );
    let toml = &file_named(file, &files, "/etc/framewise/coordinator.toml").content;
    let token_path = toml_value(toml, "coordinator", "viewer_token_file").unwrap_or_else(|| {
        panic!("{file}: coordinator.toml: coordinator.viewer_token_file is not set")
    });
    assert!(toml_value(toml, "coordinator", "viewer_token").is_none(), "{file}: coordinator.toml: the token belongs in viewer_token_file, not coordinator.viewer_token");
    let token = file_named(file, &files, &token_path);
    assert_eq!(
        token.permissions, "0600",
        "{file}: write_files {token_path}: permissions (root-only)"
    );
    assert_eq!(
        token.content.trim(),
        "__VIEWER_TOKEN__",
        "{file}: write_files {token_path}: content comes from the template's viewerToken"
    );
    let grpc = toml_value(toml, "coordinator", "grpc_addr").unwrap_or_default();
    let http = toml_value(toml, "coordinator", "http_addr").unwrap_or_default();
    assert!(grpc.ends_with(":50051") && !grpc.starts_with("127."), "{file}: coordinator.toml: coordinator.grpc_addr must listen on the network at 50051 (the NSG's port), got {grpc}");
    assert!(http.ends_with(":8080") && !http.starts_with("127."), "{file}: coordinator.toml: coordinator.http_addr must listen on the network at 8080 (the NSG's port), got {http}");
    assert_eq!(placeholders(&yaml), substituted(VM), "{file}: the placeholders in the file and those the template's coordinator customData replaces differ");
    check_config_keys(file, &yaml, &files);
}

#[test]
fn worker_cloud_init_runs_the_worker_unit() {
    let file = WORKER_INIT;
    let (yaml, files) = cloud_init(file);
    let unit = "/etc/systemd/system/framewise-worker.service";
    let (exec, restart) = unit_exec_start(file, &files, unit);
    assert_eq!(
        exec,
        "/usr/local/bin/framewise worker -c /etc/framewise/worker.toml --coordinator http://__COORDINATOR_IP__:50051",
        "{file}: {unit}: ExecStart"
    );
    assert_eq!(
        restart, "on-failure",
        "{file}: {unit}: Restart (a crash restarts the worker; an eviction's clean exit does not)"
    );
    assert!(
        yaml.contains("[systemctl, enable, framewise-worker.service]"),
        "{file}: runcmd must enable framewise-worker.service"
    );
    let toml = &file_named(file, &files, "/etc/framewise/worker.toml").content;
    assert_eq!(
        toml_value(toml, "worker", "preemption_url").as_deref(),
        Some(SCHEDULED_EVENTS),
        "{file}: worker.toml: worker.preemption_url must poll Azure Scheduled Events"
    );
    assert_eq!(
        toml_value(toml, "worker", "coordinator_url").as_deref(),
        Some("http://__COORDINATOR_IP__:50051"),
        "{file}: worker.toml: worker.coordinator_url"
    );
    assert!(yaml.contains("FRAMEWISE_WORKER__VM_NAME="), "{file}: worker.vm_name must be set (FRAMEWISE_WORKER__VM_NAME), or every notice in the placement group drains this worker");
    assert_eq!(placeholders(&yaml), substituted(VMSS), "{file}: the placeholders in the file and those the template's scale set customData replaces differ");
    let t = template();
    assert!(
        text(one(&t, VMSS), "/properties/virtualMachineProfile/osProfile/customData", "worker scale set").contains("parameters('coordinatorPrivateIp')"),
        "{TEMPLATE}: worker scale set: customData must put parameter coordinatorPrivateIp in place of __COORDINATOR_IP__"
    );
    check_config_keys(file, &yaml, &files);
}

/// `[section]` / `key = value` lines of a TOML text as dotted keys (tables included).
fn toml_keys(toml: &str) -> Vec<String> {
    let mut section = String::new();
    let mut out = Vec::new();
    for l in toml.lines().map(str::trim) {
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if l.starts_with('[') {
            section = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            out.push(section.clone());
        } else if let Some((k, _)) = l.split_once('=') {
            let k = k.trim();
            out.push(if section.is_empty() {
                k.to_string()
            } else {
                format!("{section}.{k}")
            });
        }
    }
    out
}

/// The value of `key` in `[section]`, unquoted.
fn toml_value(toml: &str, section: &str, key: &str) -> Option<String> {
    let mut cur = String::new();
    for l in toml.lines().map(str::trim) {
        if l.starts_with('[') {
            cur = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        } else if let Some((k, v)) = l.split_once('=') {
            if cur == section && k.trim() == key {
                return Some(v.trim().trim_matches('"').to_string());
            }
        }
    }
    None
}

/// Every key common/src/config.rs accepts, as dotted paths from `Config`.
fn config_rs_keys() -> BTreeSet<String> {
    let src = read("common/src/config.rs");
    let mut structs: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut cur: Option<(String, Vec<(String, String)>)> = None;
    for l in src.lines().map(str::trim) {
        if let Some(rest) = l
            .strip_prefix("pub struct ")
            .and_then(|r| r.strip_suffix('{'))
        {
            cur = Some((rest.trim().to_string(), Vec::new()));
            continue;
        }
        if let Some((name, fields)) = cur.as_mut() {
            if l == "}" {
                structs.insert(name.clone(), std::mem::take(fields));
                cur = None;
            } else if let Some((f, ty)) = l.strip_prefix("pub ").and_then(|f| f.split_once(':')) {
                fields.push((
                    f.trim().to_string(),
                    ty.trim().trim_end_matches(',').trim().to_string(),
                ));
            }
        }
    }
    fn walk(
        structs: &BTreeMap<String, Vec<(String, String)>>,
        name: &str,
        prefix: &str,
        out: &mut BTreeSet<String>,
    ) {
        for (f, ty) in structs.get(name).into_iter().flatten() {
            let key = if prefix.is_empty() {
                f.clone()
            } else {
                format!("{prefix}.{f}")
            };
            out.insert(key.clone());
            if structs.contains_key(ty) {
                walk(structs, ty, &key, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&structs, "Config", "", &mut out);
    assert!(
        out.contains("coordinator.viewer_token_file") && out.contains("worker.model.path"),
        "common/src/config.rs: could not read the Config structs (found {out:?})"
    );
    out
}

/// Every config key the cloud-init file writes (TOML files, FRAMEWISE_<SECTION>__<KEY>
/// variables) exists in config/coordinator.toml, config/worker.toml or common/src/config.rs.
fn check_config_keys(file: &str, yaml: &str, files: &[WriteFile]) {
    let mut known = config_rs_keys();
    for f in ["config/coordinator.toml", "config/worker.toml"] {
        known.extend(toml_keys(&read(f)));
    }
    let mut written = 0;
    for f in files.iter().filter(|f| f.path.ends_with(".toml")) {
        for key in toml_keys(&f.content) {
            assert!(known.contains(&key), "{file}: write_files {}: config key {key} exists in neither config/*.toml nor common/src/config.rs", f.path);
            written += 1;
        }
    }
    assert!(written > 0, "{file}: writes no framewise config file");
    // Environment variables: FRAMEWISE_LOG is the log filter; any other FRAMEWISE_* that
    // reached the process would be read as a config key (and refused if unknown).
    let b = yaml.as_bytes();
    let mut rest = 0;
    while let Some(i) = yaml[rest..].find("FRAMEWISE_").map(|i| i + rest) {
        let mut j = i + "FRAMEWISE_".len();
        while j < b.len() && (b[j].is_ascii_uppercase() || b[j].is_ascii_digit() || b[j] == b'_') {
            j += 1;
        }
        let glued = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        let var = &yaml[i..j];
        let line_start = yaml[..i].rfind('\n').map(|n| n + 1).unwrap_or(0);
        let comment = yaml[line_start..i].trim_start().starts_with('#');
        if !glued && !comment {
            let name = &var["FRAMEWISE_".len()..];
            if name != "LOG" {
                assert!(
                    name.contains("__"),
                    "{file}: {var} would be read as a config key ({})",
                    name.to_lowercase()
                );
                let key = name
                    .split("__")
                    .map(str::to_lowercase)
                    .collect::<Vec<_>>()
                    .join(".");
                assert!(known.contains(&key), "{file}: {var}: config key {key} exists in neither config/*.toml nor common/src/config.rs");
            }
        }
        rest = j;
    }
}

#[test]
fn dockerfile_builds_with_rust_and_runs_on_bookworm_slim() {
    let file = DOCKERFILE;
    let d = read(file);
    let froms: Vec<&str> = d.lines().filter_map(|l| l.strip_prefix("FROM ")).collect();
    assert_eq!(
        froms.len(),
        2,
        "{file}: expected two stages (build, runtime)"
    );
    assert!(
        froms[0].starts_with("rust:1-bookworm"),
        "{file}: build stage must be rust:1-bookworm, got {}",
        froms[0]
    );
    assert_eq!(
        froms[1].trim(),
        "debian:bookworm-slim",
        "{file}: runtime stage"
    );
    assert!(
        d.contains("cargo build --release"),
        "{file}: the build stage must run cargo build --release"
    );
    assert!(d.contains("scripts/bootstrap.sh"), "{file}: ONNX Runtime and the model must come from scripts/bootstrap.sh (its pins and checksums)");
    assert!(
        d.lines().any(|l| l.trim() == "ENTRYPOINT [\"framewise\"]"),
        "{file}: ENTRYPOINT must be framewise"
    );
    // The runtime stage installs only packages scripts/bootstrap.sh installs, and no -dev ones.
    let boot = read("scripts/bootstrap.sh");
    let debs_start = boot
        .find("debs=(")
        .expect("scripts/bootstrap.sh: debs=( list")
        + "debs=(".len();
    let debs_end = debs_start
        + boot[debs_start..]
            .find(')')
            .expect("scripts/bootstrap.sh: end of debs list");
    let boot_debs: BTreeSet<&str> = boot[debs_start..debs_end].split_whitespace().collect();
    let runtime = &d[d.rfind("FROM ").unwrap()..];
    let install = runtime
        .find("apt-get install")
        .unwrap_or_else(|| panic!("{file}: runtime stage installs no packages"));
    // From `apt-get install` to the next `&&`: flags and line continuations aside, package names.
    let cmd = &runtime[install + "apt-get install".len()..];
    let cmd = &cmd[..cmd.find("&&").unwrap_or(cmd.len())];
    let pkgs: Vec<&str> = cmd
        .split_whitespace()
        .filter(|w| !w.starts_with('-') && *w != "\\")
        .collect();
    assert!(
        pkgs.iter().any(|p| p.starts_with("gstreamer1.0-")),
        "{file}: runtime stage installs no GStreamer packages"
    );
    for p in pkgs {
        assert!(
            !p.ends_with("-dev"),
            "{file}: runtime stage installs the -dev package {p}"
        );
        assert!(
            boot_debs.contains(p),
            "{file}: runtime stage installs {p}, which scripts/bootstrap.sh does not"
        );
    }
}
