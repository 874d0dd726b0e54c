"""Build each configured cloud's driver (wiring: configuration in, drivers out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cloudpilot.clouds.base import CloudDriver
from cloudpilot.clouds.errors import CloudConfigError
from cloudpilot.config.clouds import LibcloudCloudConfig, LibvirtCloudConfig, LocalCloudConfig
from cloudpilot.config.secrets import SecretUnavailable, resolve_secrets

CloudSettings = LocalCloudConfig | LibcloudCloudConfig | LibvirtCloudConfig


def build_driver(name: str, settings: CloudSettings, data_dir: Path) -> CloudDriver:
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
    if isinstance(settings, LibvirtCloudConfig):
        return libvirt_driver(name, settings)
    from cloudpilot.clouds.libcloud_driver import LibcloudDriver

    driver_args, driver_kwargs = libcloud_credentials(name, settings)
    return LibcloudDriver(
        name,
        settings.provider,
        driver_args,
        driver_kwargs,
        settings.images,
        {flavor: f.size or flavor for flavor, f in settings.flavors.items()},
        settings.options,
        ec2_moto_compat=settings.ec2_moto_compat,
    )


def libvirt_driver(name: str, settings: LibvirtCloudConfig) -> CloudDriver:
    from cloudpilot.clouds.libvirt_driver import LibvirtDriver
    from cloudpilot.clouds.libvirt_files import ConfigDrive
    from cloudpilot.context.config_drive import CONFIG_DRIVE_FILE, CONFIG_DRIVE_LABEL

    return LibvirtDriver(
        name,
        settings.uri,
        dict(zip(settings.flavors, settings.flavor_list(), strict=True)),
        settings.base_image,
        settings.storage_dir,
        max_vms=settings.max_vms,
        network=settings.network,
        kernel=settings.kernel,
        initrd=settings.initrd,
        cmdline=settings.kernel_cmdline,
        accel=settings.accel,
        attach_seed=settings.context != "ssh",  # a golden image without cloud-init would not read it
        # context: none: the baked pilot's boot script reads a config drive, not a cidata seed.
        config_drive=ConfigDrive(CONFIG_DRIVE_LABEL, CONFIG_DRIVE_FILE) if settings.context == "none" else None,
        ssh_forward=settings.context == "ssh",
    )


def libcloud_credentials(name: str, settings: LibcloudCloudConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The driver's arguments with secrets read from the environment or files and, for ``openstack_cloud``, the
    clouds.yaml entry's auth and region underneath (what the cloud's own driver_args/kwargs give wins)."""
    from cloudpilot.clouds.openstack_clouds_yaml import libcloud_openstack_args

    try:
        args = resolve_secrets("driver_args", settings.driver_args)
        kwargs = resolve_secrets("driver_kwargs", settings.driver_kwargs)
    except SecretUnavailable as exc:
        raise CloudConfigError(name, str(exc)) from None
    if settings.openstack_cloud is None:
        return args, kwargs
    base_args, base_kwargs = libcloud_openstack_args(name, settings.openstack_cloud, settings.clouds_yaml)
    return {**base_args, **args}, {**base_kwargs, **kwargs}


def build_drivers(clouds: dict[str, CloudSettings], data_dir: Path) -> dict[str, CloudDriver]:
    return {name: build_driver(name, settings, data_dir) for name, settings in clouds.items()}
