// The shim is header-only; this file makes it a C target.
