"""Avro schemas (avro/*.avsc), the wire codec and the CQL schema (metadata.cql)."""
