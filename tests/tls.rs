//! TLS on a real coordinator process: gRPC and the dashboard over rustls with a test CA
//! (made here with the openssl command line), workers held to mutual TLS, and a job run by a
//! worker process that presents its certificate.

mod common;

use common::cluster::{check_output, spawn, Cluster, Procs};
use common::{framewise, make_clip, stderr};
use framewise_common::bearer::{connect_tls, Bearer, ClientTls};
use framewise_common::proto::worker_service_client::WorkerServiceClient;
use framewise_common::proto::{self as pb};
use std::path::{Path, PathBuf};
use std::process::Command;
use tonic::Code;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (Debian's openssl package comes with ca-certificates)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn make_pki(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=framewise test CA",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    // Extensions make X.509 v3 certificates (webpki refuses v1).
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("worker.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, subj, ext) in [
        ("server", "/CN=127.0.0.1", "server.ext"),
        ("worker", "/CN=worker-1", "worker.ext"),
    ] {
        let mut req = vec!["req", "-subj", subj];
        req.extend(ec);
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        req.extend(["-keyout", &key, "-out", &csr]);
        openssl(dir, &req);
        let sign = vec![
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-extfile",
            ext,
        ];
        openssl(dir, &sign);
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn grpc_and_the_dashboard_speak_tls_and_workers_need_their_certificate() {
    let dir = std::env::temp_dir().join(format!("fw-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    make_pki(&dir);
    let p = |n: &str| -> PathBuf { dir.join(n) };
    let cl = Cluster::new(&dir);
    let mut toml = std::fs::read_to_string(&cl.config).unwrap();
    toml.push_str(&format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_client_ca_file = \"{}\"\n",
        p("server.pem").display(),
        p("server.key").display(),
        p("ca.pem").display()
    ));
    std::fs::write(&cl.config, toml).unwrap();
    let mut procs = Procs(vec![cl.coordinator(1)]);
    let https = format!("https://127.0.0.1:{}", cl.port);
    let ca = p("ca.pem");
    let ca = ca.to_str().unwrap();

    // The CLI with the CA: fine. Without it (system roots), or in plain HTTP/2: refused.
    let ok = framewise(&["status", "--coordinator", &https, "--ca-file", ca], &[]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let untrusted = framewise(&["status", "--coordinator", &https], &[]);
    assert!(!untrusted.status.success());
    assert!(
        stderr(&untrusted).to_lowercase().contains("certificate"),
        "{}",
        stderr(&untrusted)
    );
    let plain = framewise(&["status", "--coordinator", &cl.url()], &[]);
    assert!(!plain.status.success(), "plain HTTP/2 to a TLS port");

    // A worker without a client certificate is refused, naming what it lacks.
    rt().block_on(async {
        let tls = ClientTls {
            ca_file: Some(p("ca.pem")),
            identity: None,
        };
        let ch = connect_tls(&https, Bearer::default(), &tls).await.unwrap();
        let e = WorkerServiceClient::new(ch)
            .register(pb::RegisterRequest {
                worker_id: "no-cert".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
        assert!(
            e.message().contains("client certificate"),
            "{}",
            e.message()
        );
    });

    // A worker with its certificate runs a job submitted over TLS.
    let clip = p("clip.mp4");
    make_clip(&clip, 96, 64, 20, true);
    let (cert, key) = (p("worker.pem"), p("worker.key"));
    procs.0.push(spawn(
        &[
            "worker",
            "-c",
            "config/worker.toml",
            "--coordinator",
            &https,
        ],
        &[
            ("FRAMEWISE_WORKER__WORKER_ID", "w1"),
            ("FRAMEWISE_WORKER__INTRA_THREADS", "1"),
            ("FRAMEWISE_WORKER__TLS_CA_FILE", ca),
            ("FRAMEWISE_WORKER__TLS_CERT_FILE", cert.to_str().unwrap()),
            ("FRAMEWISE_WORKER__TLS_KEY_FILE", key.to_str().unwrap()),
        ],
        &p("w1.log"),
    ));
    let out = p("out.mp4");
    let mut submit = spawn(
        &[
            "submit",
            clip.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--wait",
            "--coordinator",
            &https,
        ],
        &[("FRAMEWISE_CA_FILE", ca)],
        &p("submit.log"),
    );
    let status = common::cluster::wait_exit(&mut submit, 180);
    assert!(
        status.success(),
        "submit: {}\nworker: {}",
        std::fs::read_to_string(p("submit.log")).unwrap_or_default(),
        std::fs::read_to_string(p("w1.log")).unwrap_or_default()
    );
    check_output(&clip, &out);

    // The dashboard and API over HTTPS with the CA; plain HTTP is not served.
    let pem = std::fs::read(p("ca.pem")).unwrap();
    let root = ureq::tls::Certificate::from_pem(&pem).unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[root]))
                .build(),
        )
        .http_status_as_error(false)
        .build()
        .into();
    let r = agent
        .get(format!("https://127.0.0.1:{}/api/v1/jobs", cl.http_port))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        agent.get(cl.http_url() + "/healthz").call().is_err(),
        "plain HTTP answered"
    );
}
