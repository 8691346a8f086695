//! An OCI distribution client: push and pull against a registry.
//! (Being written; see the module's own files once they land.)
