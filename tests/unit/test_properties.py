from cloudstack_sysvm_seed import properties


def test_render_writes_upstreams_twelve_lines_in_order():
    props = properties.TemplateProperties(
        template_id=203, extension="qcow2", filename="0f0e.qcow2", physical_size=1000,
        virtual_size=5000, hypervisor_key="kvm")
    assert props.render().splitlines() == [
        "filename=0f0e.qcow2",
        "description=SystemVM Template ( kvm )",
        "hvm=false",
        "size=1000",
        "qcow2=true",
        "id=203",
        "public=true",
        "qcow2.filename=0f0e.qcow2",
        "uniquename=routing-203",
        "qcow2.virtualsize=5000",
        "virtualsize=5000",
        "qcow2.size=1000",
    ]


def test_parse_reads_back_what_render_wrote():
    props = properties.TemplateProperties(7, "qcow2", "a.qcow2", 11, 22, "lxc")
    values = properties.parse(props.render())
    assert properties.image_name(values, "qcow2") == "a.qcow2"
    assert properties.physical_size(values, "qcow2") == 11
    assert properties.virtual_size(values, "qcow2") == 22


def test_parse_tolerates_comments_blank_lines_and_ssvm_spelling():
    text = "#Fri Jan 01\n\nfilename=b.vhd\nvhd.size=9\nsize = 10\nvirtualsize=bad\n"
    values = properties.parse(text)
    assert properties.image_name(values, "vhd") == "b.vhd"
    assert properties.physical_size(values, "vhd") == 9  # <ext>.size wins, as in the SSVM
    assert properties.virtual_size(values, "vhd") is None
