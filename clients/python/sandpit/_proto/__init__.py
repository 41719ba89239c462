"""Code generated from crates/sandpit-proto/proto by tools/gen_protos.py. DO NOT EDIT."""
