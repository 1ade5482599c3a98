"""weightvault.archive: the content-addressed store and everything that reads or writes it.

Nouns, each owned by one module:

- **Backend** (``backend``): where bytes live: put/get/has/list/delete by key.
- **Store** (``store``): a repository folder: config, chunks, manifests, refs, events.
- **Chunk** (``chunk``): a bounded piece of a file, named by the hash of its raw bytes,
  stored as a self-describing safetensors container (``codecs``).
- **Manifest** (``manifest``): an immutable, hash-named record of one snapshot.
- **Ref** (``refs``): the claim ``model@version -> manifest``, created exactly once.
- **Event** (``events``): an immutable, hash-named metadata record added after a snapshot.
"""
