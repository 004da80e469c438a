// SPDX-License-Identifier: GPL-2.0
/*
 * vpmu-mmio: registers virtio-mmio platform devices described on the kernel command line
 * as `virtio_mmio.device=<size>@<base>:<irq>[:<id>]`, for kernels built without
 * CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES (Debian's). The guest's /init passes each such value
 * as `device=`; the virtio_mmio driver (loaded before or after) binds to them.
 */
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/platform_device.h>

#define MAX_DEVS 16
static char *device[MAX_DEVS];
static int ndevice;
module_param_array(device, charp, &ndevice, 0444);
MODULE_PARM_DESC(device, "<size>@<base>:<irq>[:<id>] (as virtio_mmio.device=)");

static struct platform_device *pdevs[MAX_DEVS];

static int __init parse_one(const char *s, struct resource *res, int *id)
{
	char *end;
	unsigned long long size, base;
	unsigned long irq;

	size = memparse(s, &end);
	if (!size || *end != '@')
		return -EINVAL;
	base = simple_strtoull(end + 1, &end, 0);
	if (*end != ':' || base + size < base)
		return -EINVAL;
	irq = simple_strtoul(end + 1, &end, 0);
	if (!irq || irq > 255)
		return -EINVAL;
	*id = PLATFORM_DEVID_AUTO;
	if (*end == ':') {
		*id = (int)simple_strtoul(end + 1, &end, 0);
	}
	if (*end != '\0')
		return -EINVAL;
	res[0] = (struct resource)DEFINE_RES_MEM(base, size);
	res[1] = (struct resource)DEFINE_RES_IRQ(irq);
	return 0;
}

static int __init vpmu_mmio_init(void)
{
	int i, registered = 0;

	for (i = 0; i < ndevice && i < MAX_DEVS; i++) {
		struct resource res[2];
		int id, err = parse_one(device[i], res, &id);

		if (err) {
			pr_err("vpmu-mmio: bad device '%s' (want <size>@<base>:<irq>[:<id>])\n", device[i]);
			continue;
		}
		pdevs[i] = platform_device_register_resndata(NULL, "virtio-mmio", id, res, 2, NULL, 0);
		if (IS_ERR(pdevs[i])) {
			pr_err("vpmu-mmio: registering '%s' failed: %ld\n", device[i], PTR_ERR(pdevs[i]));
			pdevs[i] = NULL;
			continue;
		}
		pr_info("vpmu-mmio: virtio-mmio device %pR irq %llu\n", &res[0], (unsigned long long)res[1].start);
		registered++;
	}
	return registered || !ndevice ? 0 : -EINVAL;
}

static void __exit vpmu_mmio_exit(void)
{
	int i;

	for (i = 0; i < MAX_DEVS; i++)
		if (pdevs[i])
			platform_device_unregister(pdevs[i]);
}

module_init(vpmu_mmio_init);
module_exit(vpmu_mmio_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("virtio-mmio devices from the kernel command line (vpmu-vmm guests)");
