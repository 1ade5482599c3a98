"""weightvault.archive: the content-addressed store and everything that reads or writes it.

Nouns, each owned by one module:

- **Backend** (``backend``): where bytes live: put/get/has/list/delete by key.
- **Store** (``store``): a repository folder: config, chunks, manifests, refs, events.
- **Chunk** (``chunk``): a bounded piece of a file, named by the hash of its raw bytes,
  stored as a self-describing safetensors container (``codecs``).
- **Manifest** (``manifest``): an immutable, hash-named record of one snapshot.
- **Ref** (``refs``): the claim ``model@version -> manifest``, created exactly once.
- **Event** (``events``): an immutable, hash-named metadata record added after a snapshot.
- **S3Backend** (``s3``): the Backend on S3-compatible object storage; ``s3://BUCKET/PREFIX`` stores.
- **Pack** (``packs``, GC in ``pack_gc``): many chunk containers in one object, found through a pack index.
- **Lease** (``leases``): the store lock of an object store, as lease objects written conditionally.
"""
