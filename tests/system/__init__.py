"""The QEMU virtual-machine system test of the installed appliance."""
