"""Build each configured cloud's driver (wiring: configuration in, drivers out)."""

from __future__ import annotations

from pathlib import Path

from cloudpilot.clouds.base import CloudDriver
from cloudpilot.config.clouds import LibcloudCloudConfig, LocalCloudConfig


def build_driver(name: str, settings: LocalCloudConfig | LibcloudCloudConfig, data_dir: Path) -> CloudDriver:
    """A driver for one ``clouds:`` entry; the local cloud keeps its VMs under DATA_DIR/clouds/NAME."""
    if isinstance(settings, LocalCloudConfig):
        from cloudpilot.clouds.local import LocalCloudDriver

        return LocalCloudDriver(
            name,
            data_dir / "clouds" / name,
            dict(zip(settings.flavors, settings.flavor_list(), strict=True)),
            max_vms=settings.max_vms,
            boot_seconds=settings.boot_seconds,
            fail_share=settings.fail_share,
            hang_share=settings.hang_share,
            payload_user=settings.payload_user,
        )
    from cloudpilot.clouds.libcloud_driver import LibcloudDriver

    return LibcloudDriver(
        name,
        settings.provider,
        settings.driver_args,
        settings.driver_kwargs,
        settings.images,
        {flavor: f.size or flavor for flavor, f in settings.flavors.items()},
        settings.options,
        ec2_moto_compat=settings.ec2_moto_compat,
    )


def build_drivers(clouds: dict[str, LocalCloudConfig | LibcloudCloudConfig], data_dir: Path) -> dict[str, CloudDriver]:
    return {name: build_driver(name, settings, data_dir) for name, settings in clouds.items()}
