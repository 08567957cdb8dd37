"""The real-NFS test tier: ganesha server, FUSE bridge, mount command."""
