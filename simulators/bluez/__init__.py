"""A virtual BlueZ for developers and tests: ``org.bluez`` on a private dbus-daemon with simulated BLE
devices, so unmodified bleak (and the gateway's BLE drivers) run with no radio. See docs/ble.md."""
