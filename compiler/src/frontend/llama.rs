//! Llama graph builder (being written).
