"""Reports an auditor can verify: point-in-time reports, their writers and signed manifests,
export jobs, samples, retention. Imports every package before it, up to collect."""
