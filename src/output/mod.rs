//! Outputs: deterministic layers, OCI images, system extension and kmod
//! images. (Being written.)
