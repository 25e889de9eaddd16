//! Shared helpers for the integration tests: where the pinned assets live.
