//! Generates the stand-in's bindings exactly the way wdk-sys 0.5.2's build
//! script does (same files, same bindgen settings as wdk-build 0.6.0's
//! `BuilderExt::wdk_default`), but from the headers Linux has: the mingw-w64
//! DDK (`ntifs.h`, `ntddk.h`, `ntstrsafe.h`) and the KMDF 1.33 subset in
//! `../kmdf-1.33-wdf-subset.h` (mingw ships no WDF headers).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use bindgen::callbacks::{ItemInfo, ItemKind, ParseCallbacks};
use bindgen::{Builder, CodegenConfig};

/// Where Debian's mingw-w64-x86-64-dev puts the DDK headers.
const MINGW_INCLUDE: &str = "/usr/share/mingw-w64/include";
/// `compute_wdffunctions_symbol_name` for KMDF 1.33.
const WDF_FUNCTIONS_SYMBOL: &str = "WdfFunctions_01033";

/// wdk-build renames the versioned table symbol to `WdfFunctions`.
#[derive(Debug)]
struct WdfFunctionsName;

impl ParseCallbacks for WdfFunctionsName {
    fn generated_name_override(&self, item: ItemInfo<'_>) -> Option<String> {
        (matches!(item.kind, ItemKind::Var) && item.name == WDF_FUNCTIONS_SYMBOL)
            .then(|| "WdfFunctions".to_string())
    }
}

fn wdf_header() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kmdf-1.33-wdf-subset.h")
}

fn newer_ddk_header() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ddk-newer-than-mingw.h")
}

/// `Config::bindgen_header_contents` for Base (+ Wdf).
fn header_contents(with_wdf: bool) -> String {
    let mut contents = String::new();
    for header in ["ntifs.h", "ntddk.h", "ntstrsafe.h"] {
        contents.push_str(&format!("#include \"{header}\"\n"));
    }
    contents.push_str(&format!("#include \"{}\"\n", newer_ddk_header().display()));
    if with_wdf {
        contents.push_str(&format!("#include \"{}\"\n", wdf_header().display()));
    }
    contents
}

/// `BuilderExt::wdk_default` of wdk-build 0.6.0 for a KMDF 1.33 x64 driver.
fn wdk_default() -> Builder {
    let mut builder = Builder::default()
        .use_core()
        .derive_default(true)
        .generate_cstr(true)
        .detect_include_paths(false)
        .clang_arg("-fno-builtin")
        .clang_arg(format!("--include-directory={MINGW_INCLUDE}/ddk"))
        .clang_arg(format!("--include-directory={MINGW_INCLUDE}"));
    // On Windows libclang finds its own headers (intrinsics); Debian's
    // libclang is not always loaded from where they are, so name them.
    // mingw-w64's headers are written for GCC: without __GNUC__ they define
    // `__attribute__(x)` away and clang's own intrinsic headers break. This
    // changes how the headers are parsed, not what the types are.
    builder = builder
        .clang_arg("--define-macro=__GNUC__=12")
        .clang_arg("--define-macro=__GNUC_MINOR__=2");
    if let Some(resource_dir) = clang_resource_dir() {
        builder = builder.clang_arg(format!("-isystem{resource_dir}/include"));
    }
    for definition in [
        "_WIN64",
        "_AMD64_",
        "AMD64",
        "_KERNEL_MODE",
        "KMDF_VERSION_MAJOR=1",
        "KMDF_VERSION_MINOR=33",
        // mingw-w64 defines PsGetCurrentThread FORCEINLINE (bindgen emits no
        // inline functions); the WDK's wdm.h declares the ntoskrnl export.
        // Skip mingw's definition: ddk-newer-than-mingw.h declares it.
        "_PSGETCURRENTTHREAD_",
    ] {
        builder = builder.clang_arg(format!("--define-macro={definition}"));
    }
    for flag in [
        "-fms-compatibility",
        "-fms-extensions",
        "-fdelayed-template-parsing",
        "--warn-=no-nonportable-include-path",
        "--warn-=no-pragma-pack",
        "--warn-=no-ignored-attributes",
        "--warn-=no-ignored-pragma-intrinsic",
        "--warn-=no-visibility",
        "--warn-=no-switch",
        "--warn-=no-comment",
        "--warn-=no-deprecated-declarations",
        "--warn-=no-invalid-token-paste",
        "--warn-=no-microsoft",
    ] {
        builder = builder.clang_arg(flag);
    }
    // The deprecated pool functions wdk-build leaves out of wdk-sys.
    for item in [
        "ExAllocatePoolWithTag",
        "ExAllocatePoolWithQuotaTag",
        "ExAllocatePoolWithTagPriority",
        "ExAllocatePool",
    ] {
        builder = builder.blocklist_item(item);
    }
    builder
        .opaque_type("_KGDTENTRY64")
        .opaque_type("_KIDTENTRY64")
        .must_use_type("NTSTATUS")
        .must_use_type("HRESULT")
        .default_enum_style(bindgen::EnumVariation::ModuleConsts)
        .parse_callbacks(Box::new(WdfFunctionsName))
        .formatter(bindgen::Formatter::Prettyplease)
        // wdk-build: the MSRV of wdk-build (1.91) and its edition (2024).
        .rust_target(bindgen::RustTarget::stable(91, 0).expect("bindgen knows Rust 1.91"))
        .rust_edition(bindgen::RustEdition::Edition2024)
}

/// `clang -print-resource-dir` (package clang), if clang is installed.
fn clang_resource_dir() -> Option<String> {
    let output = std::process::Command::new("clang")
        .arg("-print-resource-dir")
        .output()
        .ok()?;
    let dir = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (output.status.success() && !dir.is_empty()).then_some(dir)
}

fn generate(out: &Path, file: &str, builder: Builder) {
    builder
        .generate()
        .unwrap_or_else(|error| panic!("bindgen failed for {file}: {error}"))
        .write_to_file(out.join(file))
        .unwrap_or_else(|error| panic!("cannot write {file}: {error}"));
}

/// `pub const STATUS_X: NTSTATUS = ...;` for every `#define STATUS_X ((NTSTATUS)0x...L)`.
fn ntstatus_constants() -> String {
    let header = format!("{MINGW_INCLUDE}/ntstatus.h");
    println!("cargo::rerun-if-changed={header}");
    let text = fs::read_to_string(&header).unwrap_or_else(|e| panic!("{header}: {e}"));
    let mut constants = String::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some("#define"), Some(name), Some(value)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let Some(hex) = value
            .strip_prefix("((NTSTATUS)0x")
            .and_then(|rest| rest.strip_suffix(')'))
            .map(|hex| hex.trim_end_matches('L'))
        else {
            continue;
        };
        if name.starts_with("STATUS_") && u32::from_str_radix(hex, 16).is_ok() {
            constants.push_str(&format!(
                "pub const {name}: NTSTATUS = 0x{hex}_u32 as NTSTATUS;\n"
            ));
        }
    }
    constants
}

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo::rerun-if-changed={}", wdf_header().display());
    println!("cargo::rerun-if-changed={}", newer_ddk_header().display());
    println!("cargo::rerun-if-changed=build.rs");

    // wdk-sys: constants.rs (VARS), types.rs (TYPES), ntddk.rs (the rest of
    // the Base headers), wdf.rs (the rest, WDF files only).
    let all = header_contents(true);
    generate(
        &out,
        "constants.rs",
        wdk_default()
            .with_codegen_config(CodegenConfig::VARS)
            .header_contents("constants-input.h", &all),
    );
    generate(
        &out,
        "types.rs",
        wdk_default()
            .with_codegen_config(CodegenConfig::TYPES)
            .header_contents("types-input.h", &all),
    );
    generate(
        &out,
        "ntddk.rs",
        wdk_default()
            .with_codegen_config((CodegenConfig::TYPES | CodegenConfig::VARS).complement())
            .header_contents("ntddk-input.h", &header_contents(false)),
    );
    generate(
        &out,
        "wdf.rs",
        wdk_default()
            .with_codegen_config((CodegenConfig::TYPES | CodegenConfig::VARS).complement())
            .header_contents("wdf-input.h", &all)
            .allowlist_file("(?i).*wdf.*"),
    );

    // wdk-sys writes the NTSTATUS values out by hand (bindgen cannot
    // evaluate `((NTSTATUS)0xC0000001L)`); here they come from ntstatus.h.
    fs::write(out.join("ntstatus.rs"), ntstatus_constants()).expect("write ntstatus.rs");

    // KMDF >= 1.25: the table size is the WdfFunctionCount symbol.
    fs::write(
        out.join("wdf_function_count.rs"),
        "/// Number of functions in the WDF function table.\n\
         pub fn get_wdf_function_count() -> usize {\n\
         \x20   // SAFETY: written by the loader at bind time, never after.\n\
         \x20   (unsafe { crate::WdfFunctionCount }) as usize\n\
         }\n",
    )
    .expect("write wdf_function_count.rs");

    // The macro wdk-sys generates: the real wdk-macros, told where types.rs is.
    let types_path = out.join("types.rs");
    fs::write(
        out.join("call_unsafe_wdf_function_binding.rs"),
        format!(
            "/// Calls a WDF function by name through the function table.\n\
             #[macro_export]\n\
             macro_rules! call_unsafe_wdf_function_binding {{\n\
             \x20   ( $($tt:tt)* ) => {{\n\
             \x20       $crate::__proc_macros::call_unsafe_wdf_function_binding! (\n\
             \x20           r\"{}\",\n\
             \x20           $($tt)*\n\
             \x20       )\n\
             \x20   }}\n\
             }}\n",
            types_path.display()
        ),
    )
    .expect("write call_unsafe_wdf_function_binding.rs");
}
