//! Test signing: a self-signed code-signing certificate, generated once and
//! kept (`.signing/` at the repository root, or `PROCGUARD_SIGNING_DIR`), and
//! `osslsigncode` to sign and verify the image.
//!
//! A test-signed driver loads only on a machine in test-signing mode that
//! trusts this certificate (LocalMachine Root and TrustedPublisher).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Subject of the test certificate (the VM scripts trust it by this name).
pub const CERTIFICATE_SUBJECT: &str = "CN=procguard Test Signing";

/// The kept key pair.
pub struct TestCertificate {
    /// PEM certificate.
    pub cert_pem: PathBuf,
    /// PEM private key (never shipped).
    pub key_pem: PathBuf,
}

fn run(command: &mut Command, what: &str) -> Result<String, String> {
    let output = command
        .output()
        .map_err(|error| format!("{what}: {error}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!("{what} failed ({}):\n{text}", output.status))
    }
}

/// The signing directory.
pub fn signing_dir(root: &Path) -> PathBuf {
    std::env::var_os("PROCGUARD_SIGNING_DIR").map_or_else(|| root.join(".signing"), PathBuf::from)
}

/// Returns the kept certificate, creating it on first use.
pub fn ensure_certificate(dir: &Path) -> Result<TestCertificate, String> {
    let cert = TestCertificate {
        cert_pem: dir.join("procguard-test.pem"),
        key_pem: dir.join("procguard-test.key"),
    };
    if cert.cert_pem.exists() && cert.key_pem.exists() {
        return Ok(cert);
    }
    std::fs::create_dir_all(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    println!(
        "xtask: generating the test-signing certificate in {}",
        dir.display()
    );
    run(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:3072", "-sha256", "-days", "3650", "-nodes",
            ])
            .arg("-keyout")
            .arg(&cert.key_pem)
            .arg("-out")
            .arg(&cert.cert_pem)
            .args(["-subj", &format!("/{}", &CERTIFICATE_SUBJECT)])
            .args(["-addext", "extendedKeyUsage=codeSigning"])
            .args(["-addext", "keyUsage=critical,digitalSignature"]),
        "openssl req",
    )?;
    Ok(cert)
}

/// Writes the certificate as DER (`procguard.cer`, what Windows imports).
pub fn export_der(cert: &TestCertificate, out: &Path) -> Result<(), String> {
    run(
        Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert.cert_pem)
            .arg("-out")
            .arg(out),
        "openssl x509",
    )
    .map(|_| ())
}

/// Signs `input` into `output` (SHA-256 Authenticode; the PE checksum is updated).
pub fn sign(cert: &TestCertificate, input: &Path, output: &Path) -> Result<(), String> {
    if output.exists() {
        std::fs::remove_file(output).map_err(|error| format!("{}: {error}", output.display()))?;
    }
    run(
        Command::new("osslsigncode")
            .args(["sign", "-h", "sha256", "-n", "procguard"])
            .arg("-certs")
            .arg(&cert.cert_pem)
            .arg("-key")
            .arg(&cert.key_pem)
            .arg("-in")
            .arg(input)
            .arg("-out")
            .arg(output),
        "osslsigncode sign",
    )
    .map(|_| ())
}

/// Verifies the signature against the test certificate as the only trust anchor.
pub fn verify(cert: &TestCertificate, file: &Path) -> Result<String, String> {
    let text = run(
        Command::new("osslsigncode")
            .arg("verify")
            .arg("-CAfile")
            .arg(&cert.cert_pem)
            .arg("-in")
            .arg(file),
        "osslsigncode verify",
    )?;
    if text.contains("Signature verification: ok") {
        Ok(text)
    } else {
        Err(format!(
            "osslsigncode verify did not report a valid signature:\n{text}"
        ))
    }
}

/// Writes a catalog of `files` (see [`crate::catalog`]) to `output`, signed
/// (SHA-256) by `osslsigncode`, which signs an existing `.cat`, then checks
/// that the signature verifies and that every file is found in it.
pub fn make_catalog(cert: &TestCertificate, files: &[&Path], output: &Path) -> Result<(), String> {
    let unsigned = output.with_extension("unsigned.cat");
    crate::catalog::write_unsigned(files, &unsigned)?;
    let signed = sign(cert, &unsigned, output);
    let _ = std::fs::remove_file(&unsigned);
    signed?;
    verify(cert, output)?;
    let catalog =
        std::fs::read(output).map_err(|error| format!("{}: {error}", output.display()))?;
    for file in files {
        let bytes = std::fs::read(file).map_err(|error| format!("{}: {error}", file.display()))?;
        let member = crate::catalog::Member::new("", &bytes)?;
        if member.kind == crate::catalog::Kind::Pe {
            // osslsigncode recomputes the Authenticode hash and looks it up.
            let text = run(
                Command::new("osslsigncode")
                    .arg("verify")
                    .arg("-CAfile")
                    .arg(&cert.cert_pem)
                    .arg("-catalog")
                    .arg(output)
                    .arg("-in")
                    .arg(file),
                "osslsigncode verify -catalog",
            )?;
            if !text.contains("Signature verification: ok") {
                return Err(format!(
                    "{} is not verified by the catalog:\n{text}",
                    file.display()
                ));
            }
        } else {
            // A flat file's member hash is its sha1sum.
            let text = run(Command::new("sha1sum").arg(file), "sha1sum")?;
            let hex = text.get(..40).unwrap_or_default().to_ascii_uppercase();
            let mut identifier: Vec<u8> = hex.encode_utf16().flat_map(u16::to_le_bytes).collect();
            identifier.extend_from_slice(&[0, 0]);
            if hex.len() != 40
                || !catalog
                    .windows(identifier.len())
                    .any(|window| window == identifier)
            {
                return Err(format!(
                    "{}: its sha1sum {hex} is not in the catalog",
                    file.display()
                ));
            }
        }
    }
    Ok(())
}
