"""The libvirt driver shared by the plugins: connections, domains, pools and volumes, networks,
migration, error classification and volume-file copies. The only package that imports libvirt;
plugins import it, never each other."""
