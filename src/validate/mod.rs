//! Validation of root filesystems and images as a registry of named rules.
//! (Being written.)
