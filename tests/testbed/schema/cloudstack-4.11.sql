-- Sandbox `cloud` schema, CloudStack 4.11 shape.
--
-- Only the tables cloudstack-sysvm-seed reads or writes, written for the test bed (not
-- upstream's text). Column names, types, NOT NULL-ness and defaults follow upstream's
-- create-schema.sql plus the upgrade scripts up to 4.11, so that an INSERT the real
-- database would reject is rejected here too. Foreign keys that point at tables this
-- sandbox leaves out (account, domain, service_offering, ...) are left out with them.
--
-- Era markers: no image_store.readonly (4.15), no vm_template.deploy_as_is (4.15),
-- no arch columns (4.20). vm_template.state exists since 4.1 (schema-40to410).
--
-- Loaded statement by statement by sandbox.cloud.load_schema into the current database.

SET foreign_key_checks = 0;

CREATE TABLE `version` (
  `id` bigint unsigned NOT NULL AUTO_INCREMENT,
  `version` char(40) NOT NULL,
  `updated` datetime NOT NULL,
  `step` char(32) NOT NULL,
  PRIMARY KEY (`id`),
  UNIQUE KEY `uc_version__version` (`version`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE `data_center` (
  `id` bigint unsigned NOT NULL AUTO_INCREMENT,
  `name` varchar(255),
  `uuid` varchar(40),
  `description` varchar(255),
  `dns1` varchar(255) NOT NULL,
  `dns2` varchar(255),
  `ip6_dns1` varchar(255),
  `ip6_dns2` varchar(255),
  `internal_dns1` varchar(255) NOT NULL,
  `internal_dns2` varchar(255),
  `gateway` varchar(15),
  `netmask` varchar(15),
  `router_mac_address` varchar(17) NOT NULL DEFAULT '02:00:00:00:00:01',
  `mac_address` bigint unsigned NOT NULL DEFAULT 1,
  `guest_network_cidr` varchar(18),
  `domain` varchar(100),
  `domain_id` bigint unsigned,
  `networktype` varchar(255) NOT NULL DEFAULT 'Basic',
  `dns_provider` char(64) DEFAULT 'VirtualRouter',
  `gateway_provider` char(64) DEFAULT 'VirtualRouter',
  `firewall_provider` char(64) DEFAULT 'VirtualRouter',
  `dhcp_provider` char(64) DEFAULT 'VirtualRouter',
  `lb_provider` char(64) DEFAULT 'VirtualRouter',
  `vpn_provider` char(64) DEFAULT 'VirtualRouter',
  `userdata_provider` char(64) DEFAULT 'VirtualRouter',
  `allocation_state` varchar(32) NOT NULL DEFAULT 'Enabled',
  `zone_token` varchar(255),
  `is_security_group_enabled` tinyint NOT NULL DEFAULT 0,
  `is_local_storage_enabled` tinyint NOT NULL DEFAULT 0,
  `removed` datetime,
  `owner` varchar(255),
  `created` datetime,
  `lastUpdated` datetime,
  `engine_state` varchar(32) NOT NULL DEFAULT 'Disabled',
  `sort_key` int(32) NOT NULL DEFAULT 0,
  PRIMARY KEY (`id`),
  UNIQUE KEY `uc_data_center__uuid` (`uuid`),
  KEY `i_data_center__allocation_state` (`allocation_state`),
  KEY `i_data_center__removed` (`removed`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE `data_center_details` (
  `id` bigint unsigned NOT NULL AUTO_INCREMENT,
  `dc_id` bigint unsigned NOT NULL,
  `name` varchar(255) NOT NULL,
  `value` varchar(1024) NOT NULL,
  `display` tinyint(1) NOT NULL DEFAULT 1,
  PRIMARY KEY (`id`),
  CONSTRAINT `fk_dc_details__dc_id` FOREIGN KEY (`dc_id`) REFERENCES `data_center` (`id`) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE `host_pod_ref` (
  `id` bigint unsigned NOT NULL AUTO_INCREMENT,
  `name` varchar(255),
  `uuid` varchar(40),
  `data_center_id` bigint unsigned NOT NULL,
  `gateway` varchar(255) NOT NULL,
  `cidr_address` varchar(15) NOT NULL,
  `cidr_size` bigint unsigned NOT NULL,
  `description` varchar(255),
  `allocation_state` varchar(32) NOT NULL DEFAULT 'Enabled',
  `external_dhcp` tinyint NOT NULL DEFAULT 0,
  `removed` datetime,
  `owner` varchar(255),
  `created` datetime,
  `lastUpdated` datetime,
  `engine_state` varchar(32) NOT NULL DEFAULT 'Disabled',
  PRIMARY KEY (`id`),
  UNIQUE KEY `uc_host_pod_ref__name_dc` (`name`, `data_center_id`),
  UNIQUE KEY `uc_host_pod_ref__uuid` (`uuid`),
  KEY `i_host_pod_ref__data_center_id` (`data_center_id`),
  KEY `i_host_pod_ref__removed` (`removed`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE `cluster` (
  `id` bigint unsigned NOT NULL AUTO_INCREMENT,
  `name` varchar(255),
  `uuid` varchar(40),
  `guid` varchar(255) DEFAULT NULL,
  `pod_id` bigint unsigned NOT NULL,
  `data_center_id` bigint unsigned NOT NULL,
  `hypervisor_type` varchar(32),
  `cluster_type` varchar(64) DEFAULT 'CloudManaged',
  `allocation_state` varchar(32) NOT NULL DEFAULT 'Enabled',
  `managed_state` varchar(32) NOT NULL DEFAULT 'Managed',
  `removed` datetime,
  `owner` varchar(255),
  `created` datetime,
  `lastUpdated` datetime,
  `engine_state` varchar(32) NOT NULL DEFAULT 'Disabled',
  PRIMARY KEY (`id`),
  UNIQUE KEY `uc_cluster__uuid` (`uuid`),
  UNIQUE KEY `uc_cluster__guid` (`guid`),
  UNIQUE KEY `i_cluster__pod_id__name` (`pod_id`, `name`),
  KEY `i_cluster__removed` (`removed`),
  CONSTRAINT `fk_cluster__data_center_id` FOREIGN KEY (`data_center_id`) REFERENCES `data_center` (`id`) ON DELETE CASCADE,
  CONSTRAINT `fk_cluster__pod_id` FOREIGN KEY (`pod_id`) REFERENCES `host_pod_ref` (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE `host` (
  `id` bigint unsigned NOT NULL AUTO_INCREMENT,
  `name` varchar(255) NOT NULL,
  `uuid` varchar(40),
  `status` varchar(32) NOT NULL,
  `type` varchar(32) NOT NULL,
  `private_ip_address` char(40) NOT NULL,
  `private_netmask` varchar(15),
  `private_mac_address` varchar(17),
  `storage_ip_address` char(40),
  `public_ip_address` char(40),
  `cluster_id` bigint unsigned,
  `data_center_id` bigint unsigned NOT NULL,
  `pod_id` bigint unsigned,
  `cpus` int(10) unsigned,
  `speed` int(10) unsigned,
  `url` varchar(255),
  `hypervisor_type` varchar(32),
  `hypervisor_version` varchar(32),
  `ram` bigint unsigned,
  `resource` varchar(255) DEFAULT NULL,
  `version` varchar(40) NOT NULL,
  `parent` varchar(255),
  `total_size` bigint unsigned,
  `capabilities` varchar(255),
  `guid` varchar(255),
  `available` int(1) unsigned NOT NULL DEFAULT 1,
  `setup` int(1) unsigned NOT NULL DEFAULT 0,
  `dom0_memory` bigint unsigned NOT NULL,
  `last_ping` int(10) unsigned NOT NULL,
  `mgmt_server_id` bigint unsigned,
  `disconnected` datetime,
  `created` datetime,
  `removed` datetime,
  `update_count` bigint unsigned NOT NULL DEFAULT 0,
  `resource_state` varchar(32) NOT NULL DEFAULT 'Enabled',
  `owner` varchar(255),
  `lastUpdated` datetime,
  `engine_state` varchar(32) NOT NULL DEFAULT 'Disabled',
  PRIMARY KEY (`id`),
  UNIQUE KEY `uc_host__uuid` (`uuid`),
  UNIQUE KEY `uc_host__guid` (`guid`),
  KEY `i_host__removed` (`removed`),
  KEY `i_host__data_center_id` (`data_center_id`),
  CONSTRAINT `fk_host__pod_id` FOREIGN KEY (`pod_id`) REFERENCES `host_pod_ref` (`id`) ON DELETE CASCADE,
  CONSTRAINT `fk_host__cluster_id` FOREIGN KEY (`cluster_id`) REFERENCES `cluster` (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE `image_store` (
  `id` bigint unsigned NOT NULL AUTO_INCREMENT,
  `name` varchar(255) NOT NULL,
  `image_provider_name` varchar(255) NOT NULL,
  `protocol` varchar(255) NOT NULL,
  `url` varchar(255),
  `data_center_id` bigint unsigned,
  `scope` varchar(255),
  `role` varchar(255),
  `uuid` varchar(255),
  `parent` varchar(255),
  `created` datetime,
  `removed` datetime,
  `total_size` bigint unsigned,
  `used_bytes` bigint unsigned,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE `image_store_details` (
  `id` bigint unsigned NOT NULL AUTO_INCREMENT,
  `store_id` bigint unsigned NOT NULL,
  `name` varchar(255) NOT NULL,
  `value` varchar(255) NOT NULL,
  PRIMARY KEY (`id`),
  KEY `i_image_store__name__value` (`name`(128), `value`(128)),
  CONSTRAINT `fk_image_store_details__store_id` FOREIGN KEY (`store_id`) REFERENCES `image_store` (`id`) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE `guest_os_category` (
  `id` bigint unsigned NOT NULL AUTO_INCREMENT,
  `name` varchar(255) NOT NULL,
  `uuid` varchar(40),
  PRIMARY KEY (`id`),
  UNIQUE KEY `uc_guest_os_category__uuid` (`uuid`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE `guest_os` (
  `id` bigint unsigned NOT NULL AUTO_INCREMENT,
  `category_id` bigint unsigned NOT NULL,
  `name` varchar(255),
  `uuid` varchar(40),
  `display_name` varchar(255) NOT NULL,
  `created` datetime,
  `removed` datetime,
  `is_user_defined` int(1) unsigned DEFAULT 0,
  PRIMARY KEY (`id`),
  UNIQUE KEY `uc_guest_os__uuid` (`uuid`),
  CONSTRAINT `fk_guest_os__category_id` FOREIGN KEY (`category_id`) REFERENCES `guest_os_category` (`id`) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- public/featured/hvm/bits/format/created/account_id/guest_os_id have no default on
-- purpose: upstream declares them NOT NULL without one, and strict mode makes an INSERT
-- that leaves them out fail ("Field ... doesn't have a default value").
CREATE TABLE `vm_template` (
  `id` bigint unsigned NOT NULL AUTO_INCREMENT,
  `unique_name` varchar(255) NOT NULL,
  `name` varchar(255) NOT NULL,
  `uuid` varchar(40),
  `public` int(1) unsigned NOT NULL,
  `featured` int(1) unsigned NOT NULL,
  `type` varchar(32),
  `hvm` int(1) unsigned NOT NULL,
  `bits` int(6) unsigned NOT NULL,
  `url` varchar(255),
  `format` varchar(32) NOT NULL,
  `created` datetime NOT NULL,
  `removed` datetime,
  `account_id` bigint unsigned NOT NULL,
  `checksum` varchar(255),
  `display_text` varchar(4096),
  `enable_password` int(1) unsigned NOT NULL DEFAULT 1,
  `enable_sshkey` int(1) unsigned NOT NULL DEFAULT 0,
  `guest_os_id` bigint unsigned NOT NULL,
  `bootable` int(1) unsigned NOT NULL DEFAULT 1,
  `prepopulate` int(1) unsigned NOT NULL DEFAULT 0,
  `cross_zones` int(1) unsigned NOT NULL DEFAULT 0,
  `extractable` int(1) unsigned NOT NULL DEFAULT 0,
  `hypervisor_type` varchar(32),
  `source_template_id` bigint unsigned,
  `template_tag` varchar(255),
  `sort_key` int(32) NOT NULL DEFAULT 0,
  `size` bigint unsigned,
  `state` varchar(255),
  `update_count` bigint unsigned,
  `updated` datetime,
  `dynamically_scalable` int(1) unsigned NOT NULL DEFAULT 0,
  `parent_template_id` bigint unsigned,
  `direct_download` tinyint(1) DEFAULT 0,
  PRIMARY KEY (`id`),
  UNIQUE KEY `uc_vm_template__uuid` (`uuid`),
  KEY `i_vm_template__removed` (`removed`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE `template_zone_ref` (
  `id` bigint unsigned NOT NULL AUTO_INCREMENT,
  `zone_id` bigint unsigned NOT NULL,
  `template_id` bigint unsigned NOT NULL,
  `created` datetime NOT NULL,
  `last_updated` datetime,
  `removed` datetime,
  PRIMARY KEY (`id`),
  KEY `i_template_zone_ref__removed` (`removed`),
  CONSTRAINT `fk_template_zone_ref__zone_id` FOREIGN KEY (`zone_id`) REFERENCES `data_center` (`id`) ON DELETE CASCADE,
  CONSTRAINT `fk_template_zone_ref__template_id` FOREIGN KEY (`template_id`) REFERENCES `vm_template` (`id`) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- store_id is nullable and has no foreign key upstream (bare-metal rows have no store).
CREATE TABLE `template_store_ref` (
  `id` bigint unsigned NOT NULL AUTO_INCREMENT,
  `store_id` bigint unsigned,
  `template_id` bigint unsigned NOT NULL,
  `created` datetime NOT NULL,
  `last_updated` datetime,
  `job_id` varchar(255),
  `download_pct` int(10) unsigned,
  `size` bigint unsigned,
  `store_role` varchar(255),
  `physical_size` bigint unsigned DEFAULT 0,
  `download_state` varchar(255),
  `error_str` varchar(255),
  `local_path` varchar(255),
  `install_path` varchar(255),
  `url` varchar(255),
  `download_url` varchar(255),
  `download_url_created` datetime,
  `state` varchar(255) NOT NULL,
  `destroyed` tinyint(1),
  `is_copy` tinyint(1) NOT NULL DEFAULT 0,
  `update_count` bigint unsigned,
  `ref_cnt` bigint unsigned DEFAULT 0,
  `updated` datetime,
  PRIMARY KEY (`id`),
  KEY `i_template_store_ref__store_id` (`store_id`),
  CONSTRAINT `fk_template_store_ref__template_id` FOREIGN KEY (`template_id`) REFERENCES `vm_template` (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE `sequence` (
  `name` varchar(64) NOT NULL,
  `value` bigint unsigned NOT NULL,
  PRIMARY KEY (`name`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE `configuration` (
  `category` varchar(255) NOT NULL DEFAULT 'Advanced',
  `instance` varchar(255) NOT NULL,
  `component` varchar(255) NOT NULL DEFAULT 'management-server',
  `name` varchar(255) NOT NULL,
  `value` varchar(4095),
  `default_value` varchar(4095),
  `description` varchar(1024),
  `updated` datetime,
  `scope` varchar(255),
  `is_dynamic` tinyint(1) NOT NULL DEFAULT 0,
  PRIMARY KEY (`name`),
  KEY `i_configuration__instance` (`instance`),
  KEY `i_configuration__category` (`category`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- id has no AUTO_INCREMENT upstream: VM ids come from sequence `vm_instance_seq`.
CREATE TABLE `vm_instance` (
  `id` bigint unsigned NOT NULL,
  `name` varchar(255) NOT NULL,
  `uuid` varchar(40),
  `instance_name` varchar(255) NOT NULL,
  `state` varchar(32) NOT NULL,
  `vm_template_id` bigint unsigned,
  `guest_os_id` bigint unsigned NOT NULL,
  `private_mac_address` varchar(17),
  `private_ip_address` char(40),
  `pod_id` bigint unsigned,
  `data_center_id` bigint unsigned NOT NULL,
  `host_id` bigint unsigned,
  `last_host_id` bigint unsigned,
  `proxy_id` bigint unsigned,
  `proxy_assign_time` datetime,
  `vnc_password` varchar(255) NOT NULL,
  `ha_enabled` tinyint(1) NOT NULL DEFAULT 0,
  `limit_cpu_use` tinyint(1) NOT NULL DEFAULT 0,
  `update_count` bigint unsigned NOT NULL DEFAULT 0,
  `update_time` datetime,
  `created` datetime NOT NULL,
  `removed` datetime,
  `type` varchar(32) NOT NULL,
  `vm_type` varchar(32) NOT NULL,
  `account_id` bigint unsigned NOT NULL,
  `domain_id` bigint unsigned NOT NULL,
  `service_offering_id` bigint unsigned NOT NULL,
  `reservation_id` char(40),
  `hypervisor_type` char(32),
  `disk_offering_id` bigint unsigned,
  `owner` varchar(255),
  `host_name` varchar(255),
  `display_name` varchar(255),
  `desired_state` varchar(32),
  `display_vm` tinyint(1) NOT NULL DEFAULT 1,
  `dynamically_scalable` int(1) unsigned NOT NULL DEFAULT 0,
  `power_state` varchar(74) DEFAULT 'PowerUnknown',
  `power_state_update_time` datetime,
  `power_state_update_count` int DEFAULT 0,
  `power_host` bigint unsigned,
  `user_id` bigint unsigned NOT NULL DEFAULT 1,
  PRIMARY KEY (`id`),
  UNIQUE KEY `uc_vm_instance_uuid` (`uuid`),
  KEY `i_vm_instance__removed` (`removed`),
  KEY `i_vm_instance__type` (`type`),
  KEY `i_vm_instance__data_center_id` (`data_center_id`),
  CONSTRAINT `fk_vm_instance__template_id` FOREIGN KEY (`vm_template_id`) REFERENCES `vm_template` (`id`),
  CONSTRAINT `fk_vm_instance__host_id` FOREIGN KEY (`host_id`) REFERENCES `host` (`id`),
  CONSTRAINT `fk_vm_instance__last_host_id` FOREIGN KEY (`last_host_id`) REFERENCES `host` (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

SET foreign_key_checks = 1;

-- ---------------------------------------------------------------------------------------
-- Seed data: what a freshly installed 4.11 management server leaves behind.
-- ---------------------------------------------------------------------------------------

INSERT INTO `version` (`version`, `updated`, `step`) VALUES ('4.11.3.0', NOW(), 'Complete');

-- create-schema starts vm_template_seq at 200, so registered templates get ids >= 200.
INSERT INTO `sequence` (`name`, `value`) VALUES
  ('vm_instance_seq', 1),
  ('vm_template_seq', 200),
  ('volume_seq', 1),
  ('networks_seq', 200),
  ('storage_pool_seq', 200);

INSERT INTO `guest_os_category` (`id`, `name`, `uuid`) VALUES
  (1, 'CentOS', UUID()),
  (2, 'Debian', UUID()),
  (3, 'Oracle', UUID()),
  (7, 'Other', UUID());

-- 15, 99 and 183 are the ids SystemVmTemplateRegistration (4.16) hard-codes for KVM/LXC/
-- Hyper-V, XenServer/VMware and Ovm3; the display names are upstream's rows of those ids.
INSERT INTO `guest_os` (`id`, `category_id`, `uuid`, `display_name`, `created`) VALUES
  (12, 1, UUID(), 'CentOS 5.3 (64-bit)', NOW()),
  (15, 2, UUID(), 'Debian GNU/Linux 5.0 (64-bit)', NOW()),
  (99, 7, UUID(), 'Other Linux (64-bit)', NOW()),
  (112, 1, UUID(), 'CentOS 5.5 (64-bit)', NOW()),
  (183, 2, UUID(), 'Debian GNU/Linux 7(32-bit)', NOW());

-- The built-in rows (ids below 200, inserted with explicit ids like upstream's templates
-- data). URLs and checksums are sandbox placeholders.
INSERT INTO `vm_template` (`id`, `unique_name`, `name`, `uuid`, `public`, `featured`, `type`, `hvm`, `bits`, `url`, `format`, `created`, `removed`, `account_id`, `checksum`, `display_text`, `enable_password`, `guest_os_id`, `cross_zones`, `extractable`, `hypervisor_type`, `state`) VALUES
  (1, 'routing-1', 'SystemVM Template (XenServer)', UUID(), 0, 0, 'SYSTEM', 0, 64, 'http://templates.sandbox.invalid/systemvm/routing-xenserver.vhd.bz2', 'VHD', NOW(), NULL, 1, '3f2a0c6f1d7b4e8a9c0d1e2f3a4b5c6d', 'SystemVM Template (XenServer)', 0, 99, 1, 0, 'XenServer', 'Active'),
  (2, 'centos53-x86_64', 'CentOS 5.3(64-bit) no GUI (XenServer)', UUID(), 1, 1, 'BUILTIN', 0, 64, 'http://templates.sandbox.invalid/builtin/centos53-x86_64.vhd.bz2', 'VHD', NOW(), NOW(), 1, '0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e', 'CentOS 5.3(64-bit) no GUI (XenServer)', 0, 12, 1, 1, 'XenServer', 'Inactive'),
  (3, 'routing-3', 'SystemVM Template (KVM)', UUID(), 0, 0, 'SYSTEM', 0, 64, 'http://templates.sandbox.invalid/systemvm/routing-kvm.qcow2.bz2', 'QCOW2', NOW(), NULL, 1, '9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d', 'SystemVM Template (KVM)', 0, 15, 1, 0, 'KVM', 'Active'),
  (4, 'centos55-x86_64', 'CentOS 5.5(64-bit) no GUI (KVM)', UUID(), 1, 1, 'BUILTIN', 0, 64, 'http://templates.sandbox.invalid/builtin/centos55-x86_64.qcow2.bz2', 'QCOW2', NOW(), NULL, 1, '1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f', 'CentOS 5.5(64-bit) no GUI (KVM)', 0, 112, 1, 1, 'KVM', 'Active'),
  (7, 'centos53-x64', 'CentOS 5.3(64-bit) no GUI (vSphere)', UUID(), 1, 1, 'BUILTIN', 0, 64, 'http://templates.sandbox.invalid/builtin/centos53-x64.ova', 'OVA', NOW(), NULL, 1, '2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a', 'CentOS 5.3(64-bit) no GUI (vSphere)', 0, 12, 1, 1, 'VMware', 'Active'),
  (8, 'routing-8', 'SystemVM Template (vSphere)', UUID(), 0, 0, 'SYSTEM', 0, 32, 'http://templates.sandbox.invalid/systemvm/routing-vmware.ova', 'OVA', NOW(), NULL, 1, '4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b', 'SystemVM Template (vSphere)', 0, 15, 1, 0, 'VMware', 'Active'),
  (9, 'routing-9', 'SystemVM Template (HyperV)', UUID(), 0, 0, 'SYSTEM', 0, 32, 'http://templates.sandbox.invalid/systemvm/routing-hyperv.vhd.bz2', 'VHD', NOW(), NULL, 1, '3f2a0c6f1d7b4e8a9c0d1e2f3a4b5c6d', 'SystemVM Template (HyperV)', 0, 15, 1, 0, 'Hyperv', 'Active'),
  (10, 'routing-10', 'SystemVM Template (LXC)', UUID(), 0, 0, 'SYSTEM', 0, 64, 'http://templates.sandbox.invalid/systemvm/routing-kvm.qcow2.bz2', 'QCOW2', NOW(), NULL, 1, '9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d', 'SystemVM Template (LXC)', 0, 15, 1, 0, 'LXC', 'Active');

INSERT INTO `configuration` (`category`, `instance`, `component`, `name`, `value`, `default_value`, `description`, `scope`, `is_dynamic`) VALUES
  ('Advanced', 'DEFAULT', 'NetworkManager', 'router.template.kvm', 'SystemVM Template (KVM)', 'SystemVM Template (KVM)', 'Name of the default router template on KVM.', 'zone', 0),
  ('Advanced', 'DEFAULT', 'NetworkManager', 'router.template.vmware', 'SystemVM Template (vSphere)', 'SystemVM Template (vSphere)', 'Name of the default router template on VMware.', 'zone', 0),
  ('Advanced', 'DEFAULT', 'NetworkManager', 'router.template.xenserver', 'SystemVM Template (XenServer)', 'SystemVM Template (XenServer)', 'Name of the default router template on XenServer.', 'zone', 0),
  ('Advanced', 'DEFAULT', 'NetworkManager', 'router.template.hyperv', 'SystemVM Template (HyperV)', 'SystemVM Template (HyperV)', 'Name of the default router template on Hyper-V.', 'zone', 0),
  ('Advanced', 'DEFAULT', 'NetworkManager', 'router.template.lxc', 'SystemVM Template (LXC)', 'SystemVM Template (LXC)', 'Name of the default router template on LXC.', 'zone', 0),
  ('Advanced', 'DEFAULT', 'NetworkManager', 'router.template.ovm3', 'SystemVM Template (Ovm3)', 'SystemVM Template (Ovm3)', 'Name of the default router template on Ovm3.', 'zone', 0),
  ('Advanced', 'DEFAULT', 'NetworkManager', 'minreq.sysvmtemplate.version', '4.11.0', '4.11.0', 'Minimum SystemVM template version the management server accepts.', NULL, 0),
  ('Advanced', 'DEFAULT', 'management-server', 'hypervisor.list', 'KVM,XenServer,VMware,Hyperv,BareMetal,Ovm,LXC,Ovm3', 'KVM,XenServer,VMware,Hyperv,BareMetal,Ovm,LXC,Ovm3', 'The list of hypervisors this management server can manage.', NULL, 0);
