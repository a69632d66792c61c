//! Where a worker runs its model: parsed once from config or the command line, so a typo
//! is one clear error at start-up instead of a silent CPU fallback.

use std::fmt;

/// The `worker.device` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSetting {
    /// CUDA when a GPU and the CUDA provider are there, else the CPU.
    Auto,
    Cpu,
    /// Every GPU `worker.gpus` selects.
    Cuda,
    /// One GPU by index.
    CudaDevice(u32),
}

/// A concrete device one inference pipeline runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Cuda(u32),
}

impl Device {
    /// The GPU's index, for what must run on the same GPU (its hardware decoder); None on a CPU.
    pub fn gpu(self) -> Option<u32> {
        match self {
            Device::Cuda(n) => Some(n),
            Device::Cpu => None,
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Parses "auto", "cpu", "cuda" or "cuda:N".
pub fn parse_device(s: &str) -> Result<DeviceSetting, String> {
    match s.trim() {
        "auto" => Ok(DeviceSetting::Auto),
        "cpu" => Ok(DeviceSetting::Cpu),
        "cuda" | "gpu" => Ok(DeviceSetting::Cuda),
        other => match other.strip_prefix("cuda:") {
            Some(n) => n
                .parse()
                .map(DeviceSetting::CudaDevice)
                .map_err(|_| format!("{other:?}: the GPU index after \"cuda:\" must be a number")),
            None => Err(format!("{other:?} is not one of auto, cpu, cuda, cuda:N")),
        },
    }
}

/// Parses "all" (None) or a comma-separated list of GPU indices.
pub fn parse_gpus(s: &str) -> Result<Option<Vec<u32>>, String> {
    let s = s.trim();
    if s == "all" || s.is_empty() {
        return Ok(None);
    }
    let mut v = Vec::new();
    for part in s.split(',') {
        let n: u32 = part
            .trim()
            .parse()
            .map_err(|_| format!("{part:?} is not a GPU index (use \"all\" or e.g. \"0,2\")"))?;
        if v.contains(&n) {
            return Err(format!("GPU {n} is listed twice"));
        }
        v.push(n);
    }
    Ok(Some(v))
}

/// The GPUs this machine shows: CUDA_VISIBLE_DEVICES when set (renumbered from 0, as CUDA
/// does), else the /dev/nvidiaN device files the NVIDIA driver creates.
pub fn visible_gpus() -> Vec<u32> {
    if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
        let n = v.split(',').filter(|s| !s.trim().is_empty()).count();
        return (0..n as u32).collect();
    }
    let mut found: Vec<u32> = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("nvidia")?
                        .parse::<u32>()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort_unstable();
    found
}

/// The devices to run pipelines on, given the settings and the GPUs that are there.
pub fn resolve(
    setting: DeviceSetting,
    gpus: Option<&[u32]>,
    visible: &[u32],
) -> Result<Vec<Device>, String> {
    let pick = |want: Option<&[u32]>| -> Result<Vec<Device>, String> {
        match want {
            None => Ok(visible.iter().map(|&n| Device::Cuda(n)).collect()),
            Some(list) => list
                .iter()
                .map(|&n| {
                    if visible.contains(&n) {
                        Ok(Device::Cuda(n))
                    } else {
                        Err(format!(
                            "GPU {n} is not there (this machine shows {visible:?})"
                        ))
                    }
                })
                .collect(),
        }
    };
    match setting {
        DeviceSetting::Cpu => Ok(vec![Device::Cpu]),
        DeviceSetting::Auto if visible.is_empty() => Ok(vec![Device::Cpu]),
        DeviceSetting::Auto => pick(gpus),
        DeviceSetting::Cuda if visible.is_empty() => {
            Err("no GPU found (no /dev/nvidiaN and CUDA_VISIBLE_DEVICES unset)".into())
        }
        DeviceSetting::Cuda => pick(gpus),
        DeviceSetting::CudaDevice(n) => pick(Some(&[n])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse() {
        assert_eq!(parse_device("auto"), Ok(DeviceSetting::Auto));
        assert_eq!(parse_device("cuda:1"), Ok(DeviceSetting::CudaDevice(1)));
        assert!(parse_device("cuda:x").unwrap_err().contains("GPU index"));
        assert!(parse_device("tpu").unwrap_err().contains("auto, cpu"));
        assert_eq!(parse_gpus("all"), Ok(None));
        assert_eq!(parse_gpus("0, 2"), Ok(Some(vec![0, 2])));
        assert!(parse_gpus("0,0").unwrap_err().contains("twice"));
        assert!(parse_gpus("a").is_err());
    }

    #[test]
    fn resolution_follows_what_is_there() {
        use Device::*;
        assert_eq!(resolve(DeviceSetting::Auto, None, &[]), Ok(vec![Cpu]));
        assert_eq!(
            resolve(DeviceSetting::Auto, None, &[0, 1]),
            Ok(vec![Cuda(0), Cuda(1)])
        );
        assert_eq!(
            resolve(DeviceSetting::Cuda, Some(&[1]), &[0, 1]),
            Ok(vec![Cuda(1)])
        );
        assert!(resolve(DeviceSetting::Cuda, None, &[])
            .unwrap_err()
            .contains("no GPU"));
        assert!(resolve(DeviceSetting::CudaDevice(3), None, &[0])
            .unwrap_err()
            .contains("GPU 3"));
        assert_eq!(resolve(DeviceSetting::Cpu, None, &[0]), Ok(vec![Cpu]));
    }
}
