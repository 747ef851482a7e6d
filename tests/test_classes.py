"""Class tables: reading .csv/.xlsx, every error case (file, row, value named), lookups, writers."""

from __future__ import annotations

import csv
from pathlib import Path

import openpyxl
import pytest

from dl_utils.annotations import Label, MediaInfo
from dl_utils.classes import (
    LABEL_TYPES,
    ClassInfo,
    ClassTable,
    UnknownClassError,
    template_path,
    template_table,
    write_template,
)
from dl_utils.cv_utils.colors import palette
from dl_utils.errors import ClassTableError, InputError


def write_csv(path: Path, text: str, *, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def write_xlsx(
    path: Path, rows: list[list], *, sheet: str = "classes", first: str | None = None
) -> Path:
    wb = openpyxl.Workbook()
    ws = wb.active
    if first is not None:  # a sheet before the class sheet
        ws.title = first
        ws.append(["not", "the", "classes"])
        ws = wb.create_sheet(sheet)
    else:
        ws.title = sheet
    for r in rows:
        ws.append(r)
    wb.save(path)
    return path


def load_error(path: Path, *needles: str) -> str:
    """Load ``path``, expect a one-line ClassTableError containing every needle."""
    with pytest.raises(ClassTableError) as ei:
        ClassTable.load(path)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


# ------------------------------------------------------------------------------ reading
def test_csv_semicolon_bom_aliases_and_rgb_colours(tmp_path):
    p = write_csv(
        tmp_path / "klassen.csv",
        " Class ;ID;Colour;Parent;Aliases;Type;Description\n"
        "Fahrzeug;0;128,128,128;;;;\n"
        'car;1;255,0,0;Fahrzeug;automobile | sedan;MASK;"Pkw; also vans"\n'
        "truck;2;#0f0;fahrzeug;lorry;;\n"
        "café;5;00FF7f;;;rectangle;\n",
        bom=True,
    )
    t = ClassTable.load(p)
    assert [(c.name, c.id, c.color, c.superclass) for c in t] == [
        ("Fahrzeug", 0, "#808080", None),
        ("car", 1, "#ff0000", "Fahrzeug"),
        (
            "truck",
            2,
            "#00ff00",
            "Fahrzeug",
        ),  # superclass matched case-insensitively, spelled as its row
        ("café", 5, "#00ff7f", None),
    ]
    car = t["car"]
    assert car.synonyms == ("automobile", "sedan")
    assert car.type == "mask" and car.description == "Pkw; also vans" and car.row == 3
    assert t["café"].type == "rectangle" and t["truck"].type == "any"


def test_csv_comma_tab_and_quoted_multiline_cells(tmp_path):
    tsv = write_csv(tmp_path / "c.tsv", "name\tcolor\ncar\t#112233\nbus\t#445566\n")
    assert [(c.name, c.color) for c in ClassTable.load(tsv)] == [
        ("car", "#112233"),
        ("bus", "#445566"),
    ]
    # one-column CSV: no delimiter to see; a quoted cell spanning two lines is still one row
    one = write_csv(tmp_path / "one.csv", 'name,description\ncar,"two\nlines"\nbus,\n')
    t = ClassTable.load(one)
    assert t["car"].description == "two\nlines" and t["bus"].row == 3
    assert ClassTable.load(write_csv(tmp_path / "n.csv", "name\ncar\n")).names == ["car"]


def test_blank_and_comment_rows_are_skipped_but_counted(tmp_path):
    p = write_csv(
        tmp_path / "classes.csv",
        "# class table for project X\n\nname,id\n,\ncar,1\n# bus,2\n  \ntruck,x\n",
    )
    # header on line 3, truck on line 8: rows are numbered as a spreadsheet shows them
    load_error(p, "classes.csv", "row 8", "'x'", "truck")
    p.write_text("# comment\nname,id\n,\ncar,1\n#bus,2\ntruck,\n")
    t = ClassTable.load(p)
    assert [(c.name, c.id, c.row) for c in t] == [("car", 1, 4), ("truck", 2, 6)]


def test_comment_rule_does_not_eat_colours_or_unnamed_rows(tmp_path):
    # colour as first column: '#ff0000' there is data, not a comment
    p = write_csv(tmp_path / "c.csv", "color,name\n#ff0000,car\n# just a note,\n#00f,bus\n")
    t = ClassTable.load(p)
    assert [(c.name, c.color) for c in t] == [("car", "#ff0000"), ("bus", "#0000ff")]
    assert t["bus"].row == 4  # row 3 is a comment: '# just a note' is no colour
    # a row with only a colour is an unnamed class, not a comment
    write_csv(p, "name,id,color\ncar,1,\n,,#ff0000\n")
    load_error(p, "c.csv", "row 3", "the name is empty", "color='#ff0000'")


def test_xlsx_float_ids_named_sheet_and_offset_table(tmp_path):
    p = write_xlsx(
        tmp_path / "classes.xlsx",
        [
            ["Name", "Id", "Color", "Superclass", "Synonyms"],
            ["vehicle", 3.0, "#010203", None, None],
            [None, None, None, None, None],
            ["car", 7.0, None, "vehicle", "automobile; sedan"],
            ["bus", None, "0,0,255", "vehicle", None],
            ["ferry", 10, 80, None, None],
        ],  # Excel turns a typed 000080 into the number 80
        first="notes",
    )
    t = ClassTable.load(p)
    assert [(c.name, c.id, c.row) for c in t] == [
        ("vehicle", 3, 2),
        ("car", 7, 4),
        ("ferry", 10, 6),
        ("bus", 11, 5),
    ]
    assert (
        isinstance(t["car"].id, int)
        and t["bus"].color == "#0000ff"
        and t["ferry"].color == "#000080"
    )
    assert t["car"].synonyms == ("automobile", "sedan")
    # without a sheet named "classes" the first sheet is read, and its name appears in errors
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Tabelle1"
    ws["B3"], ws["C3"] = "name", "id"
    ws["B4"], ws["C4"] = "car", 1
    ws["B5"], ws["C5"] = "bus", 3.5
    wb.save(tmp_path / "offset.xlsx")
    load_error(tmp_path / "offset.xlsx", "offset.xlsx", "sheet 'Tabelle1'", "row 5", "3.5", "bus")
    ws["C5"] = 2
    wb.save(tmp_path / "offset.xlsx")
    assert [(c.name, c.id) for c in ClassTable.load(tmp_path / "offset.xlsx")] == [
        ("car", 1),
        ("bus", 2),
    ]


def test_extra_columns_are_kept(tmp_path):
    p = write_csv(tmp_path / "c.csv", "name,Owner,coco_id\ncar,ana,3\nbus,,6\n")
    t = ClassTable.load(p)
    assert t["car"].extra == {"Owner": "ana", "coco_id": "3"}
    assert t["bus"].extra == {"coco_id": "6"}
    out = t.to_csv(tmp_path / "out.csv")
    assert ClassTable.load(out) == t
    assert next(csv.reader(out.read_text(encoding="utf-8-sig").splitlines()))[-2:] == [
        "Owner",
        "coco_id",
    ]


# ------------------------------------------------------------------------------ ids and colours
def test_missing_ids_follow_the_largest_given_id_in_row_order(tmp_path):
    p = write_csv(tmp_path / "c.csv", "name,id\na,\nb,5\nc,\nd,2\ne,\n")
    assert [(c.name, c.id) for c in ClassTable.load(p)] == [
        ("d", 2),
        ("b", 5),
        ("a", 6),
        ("c", 7),
        ("e", 8),
    ]
    p.write_text("name,id\na,\nb,\n")
    assert ClassTable.load(p).ids == [0, 1]
    p.write_text("name,id\na,3.0\nb,0\n")  # "3.0" as a CSV export of a float column
    assert ClassTable.load(p).ids == [0, 3]


def test_missing_colours_come_from_the_palette_avoiding_given_ones(tmp_path):
    given = palette(3)  # the first palette colours: the fill has to skip them
    rows = "\n".join([f"c{i}," + (given[i // 3] if i % 3 == 0 else "") for i in range(9)])
    t = ClassTable.load(write_csv(tmp_path / "c.csv", "name,color\n" + rows + "\n"))
    colors = [c.color for c in t]
    filled = [c.color for c in t if int(c.name[1:]) % 3]
    assert len(set(colors)) == 9
    assert not set(filled) & set(given)
    assert filled == palette(6, avoid=set(given))  # row order, deterministic


def test_from_names_and_from_records():
    t = ClassTable.from_names(["car", "person", "traffic light"])
    assert t.ids == [0, 1, 2] and t.names == ["car", "person", "traffic light"]
    assert [c.color for c in t] == palette(3)
    r = ClassTable.from_records(
        [
            {"class": "car", "colour": (255, 0, 0), "synonyms": ["auto", "sedan"], "id": 4},
            {"name": "van", "parent": "car"},
        ]
    )
    assert r["car"] == ClassInfo("car", 4, "#ff0000", synonyms=("auto", "sedan"))
    assert r["van"].id == 5 and r["van"].superclass == "car"
    assert ClassTable(list(r), source="copy") == r  # the constructor checks ClassInfo like a file
    with pytest.raises(
        ClassTableError,
        match=r"<names>, record 3: class 'Car' is defined twice \(first on record 1 as 'car'\)",
    ):
        ClassTable.from_names(["car", "bus", "Car"])
    with pytest.raises(ClassTableError, match=r"<records>, record 2: the name is empty"):
        ClassTable.from_records([{"name": "a"}, {}])
    with pytest.raises(ClassTableError, match=r"<records>, record 1: str 'car' is not a dict"):
        ClassTable.from_records(["car"])
    with pytest.raises(ClassTableError, match="no classes given"):
        ClassTable.from_names([])
    assert ClassTable.from_names("car").names == ["car"]  # not one class per letter


# ------------------------------------------------------------------------------ errors
def test_file_level_errors(tmp_path):
    load_error(tmp_path / "missing.csv", "missing.csv", "not found")
    load_error(tmp_path, str(tmp_path), "folder")
    (tmp_path / "old.xls").write_bytes(b"\xd0\xcf\x11\xe0")
    load_error(tmp_path / "old.xls", "old.xls", "'.xls'", "save it as .xlsx")
    (tmp_path / "c.json").write_text("{}")
    load_error(tmp_path / "c.json", "c.json", "'.json'", "use .xlsx or .csv")
    (tmp_path / "broken.xlsx").write_bytes(b"name,id\ncar,1\n")
    load_error(tmp_path / "broken.xlsx", "broken.xlsx", "cannot be read as an Excel workbook")
    (tmp_path / "latin1.csv").write_bytes("name\ncaf\xe9\n".encode("latin-1"))
    load_error(tmp_path / "latin1.csv", "latin1.csv", "not UTF-8", "CSV UTF-8")


def test_header_errors(tmp_path):
    load_error(write_csv(tmp_path / "empty.csv", ""), "empty.csv", "no header row")
    load_error(write_csv(tmp_path / "comments.csv", "# only\n\n"), "comments.csv", "no header row")
    msg = load_error(
        write_csv(tmp_path / "noname.csv", "id;colour;what\n1;#fff;x\n"), "noname.csv", "row 1"
    )
    assert "no 'name' column" in msg and "'id', 'colour', 'what'" in msg
    load_error(
        write_csv(tmp_path / "header.csv", "name,id\n\n# x\n"),
        "header.csv",
        "no classes below the header (row 1)",
    )
    load_error(
        write_csv(tmp_path / "twice.csv", "class,Name\na,b\n"),
        "twice.csv",
        "row 1",
        "'class' and 'Name' both mean 'name'",
    )
    xl = write_xlsx(tmp_path / "empty.xlsx", [])
    load_error(xl, "empty.xlsx", "sheet 'classes'", "no header row")


@pytest.mark.parametrize(
    "body, needles",
    [
        ("car,1,\n,2,#ff0000\n", ["row 3", "the name is empty", "id='2'", "color='#ff0000'"]),
        (
            "car,1,\nbus,2,\nCAR,3,\n",
            ["row 4", "class 'CAR' is defined twice (first on row 2 as 'car')"],
        ),
        ("car,1,\nbus,1,\n", ["row 3", "id 1 of class 'bus' is already used by 'car' (row 2)"]),
        ("car,one,\n", ["row 2", "id 'one' of class 'car'", "whole number"]),
        ("car,-1,\n", ["row 2", "id '-1'"]),
        ("car,2.5,\n", ["row 2", "id '2.5'"]),
        ("car,1,reddish\n", ["row 2", "colour 'reddish' of class 'car'", "'#rrggbb'"]),
        ('car,1,"300,0,0"\n', ["row 2", "colour '300,0,0'"]),
        ("car,1,#12345\n", ["row 2", "colour '#12345'"]),
    ],
)
def test_row_errors(tmp_path, body, needles):
    load_error(
        write_csv(tmp_path / "classes.csv", "name,id,color\n" + body), "classes.csv", *needles
    )


def test_superclass_errors(tmp_path):
    p = tmp_path / "classes.csv"
    write_csv(p, "name,superclass\nvehicle,\ncar,vehicel\n")
    load_error(
        p, "classes.csv", "row 3", "superclass 'vehicel' of class 'car'", "did you mean 'vehicle'?"
    )
    write_csv(p, "name,superclass\nvehicle,\ncar,zebra\n")
    load_error(p, "row 3", "'zebra'", "known classes: 'vehicle', 'car'")
    write_csv(p, "name,superclass\nvehicle,\ncar,Car\n")
    load_error(p, "row 3", "class 'car' names itself as its superclass")
    write_csv(p, "name,superclass\nperson,\na,b\nb,c\nc,a\n")
    load_error(p, "classes.csv", "row 3", "cycle (a -> b -> c -> a)")
    write_csv(p, "name,superclass\nx,\ny,z\nz,w\nw,z\n")  # y hangs below a cycle it is not part of
    load_error(p, "row 4", "cycle (z -> w -> z)")


def test_type_and_synonym_errors(tmp_path):
    p = tmp_path / "classes.csv"
    write_csv(p, "name,type\ncar,box\n")
    msg = load_error(p, "classes.csv", "row 2", "type 'box' of class 'car'")
    assert all(t in msg for t in LABEL_TYPES)
    write_csv(p, "name,synonyms\ntruck,lorry; pickup\ncar,sedan|Lorry\n")
    load_error(
        p, "row 3", "synonym 'Lorry' of class 'car' is also a synonym of class 'truck' (row 2)"
    )
    write_csv(p, "name,synonyms\ntruck,\ncar,automobile;truck\n")
    load_error(p, "row 3", "synonym 'truck' of class 'car' is the name of class 'truck' (row 2)")
    write_csv(p, "name,synonyms\ncar,automobile;Car; automobile\n")  # own name and repeats: dropped
    assert ClassTable.load(p)["car"].synonyms == ("automobile",)


def test_xlsx_errors_name_sheet_and_row(tmp_path):
    p = write_xlsx(
        tmp_path / "classes.xlsx", [["name", "id"], ["car", 3], ["bus", 3.5]], first="info"
    )
    load_error(p, "classes.xlsx, sheet 'classes', row 3: id '3.5' of class 'bus'")
    p = write_xlsx(tmp_path / "dup.xlsx", [["name", "id"], ["car", 1], [None, None], ["car", 2]])
    load_error(p, "dup.xlsx, sheet 'classes', row 4: class 'car' is defined twice (first on row 2)")
    p = write_xlsx(tmp_path / "bool.xlsx", [["name", "id"], ["car", True]])
    load_error(p, "row 2", "id 'TRUE'")


# ------------------------------------------------------------------------------ lookups
@pytest.fixture
def table() -> ClassTable:
    return ClassTable.from_records(
        [
            {"name": "vehicle", "id": 0},
            {"name": "car", "id": 1, "superclass": "vehicle", "synonyms": "automobile; sedan"},
            {"name": "van", "id": 2, "superclass": "car"},
            {"name": "bus", "id": 3, "superclass": "vehicle"},
            {"name": "battery", "id": 4},
            {"name": "traffic light", "id": 5, "synonyms": "traffic signal"},
        ]
    )


def test_lookup_by_name_and_id(table):
    assert table["Car"] is table[1] is table.get("  car ")
    assert "TRAFFIC light" in table and 5 in table and "automobile" not in table and 9 not in table
    assert table.get("nope") is None and table.get(9) is None
    with pytest.raises(
        UnknownClassError, match=r"no class named 'cra'; did you mean 'car'\?"
    ) as ei:
        table["cra"]
    assert isinstance(ei.value, KeyError) and isinstance(ei.value, ClassTableError)
    with pytest.raises(KeyError, match=r"no class has id 9 \(ids 0..5\)"):
        table[9]
    assert len(table) == 6 and [c.id for c in table] == [0, 1, 2, 3, 4, 5]


def test_hierarchy(table):
    assert table.superclasses() == ["vehicle", "car"]
    assert table.children("vehicle") == ["car", "bus"]
    assert table.descendants("vehicle") == ["car", "van", "bus"]
    assert table.ancestors("van") == ["car", "vehicle"] and table.ancestors("vehicle") == []
    assert table.leaves() == ["van", "bus", "battery", "traffic light"]


def test_resolve(table):
    r = table.resolve
    assert r("car") is table["car"] and r(" Car. ") is table["car"]
    assert r("sedan") is table["car"] and r("AUTOMOBILES") is table["car"]
    assert (
        r("traffic-lights") is table["traffic light"]
        and r("Traffic_Signal") is table["traffic light"]
    )
    assert (
        r("buses") is table["bus"]
        and r("batteries") is table["battery"]
        and r("vans") is table["van"]
    )
    assert r("tram") is None and r("") is None and r("car truck") is None and r("s") is None


def test_prompt(table):
    assert table.prompt() == "vehicle. car. van. bus. battery. traffic light."
    assert table.prompt(table.leaves()) == "van. bus. battery. traffic light."
    assert table.prompt(["Traffic Light", "car"], synonyms=True) == (
        "traffic light. traffic signal. car. automobile. sedan."
    )
    with pytest.raises(UnknownClassError, match="'tram'"):
        table.prompt(["tram"])
    assert table.prompt("Traffic Light") == "traffic light."
    with pytest.raises(ClassTableError, match=r"'st. bernard'.*contains '\.'"):
        ClassTable.from_names(["st. bernard"]).prompt()


def test_labels_feed_the_store(table, tmp_path):
    labels = table.labels()
    assert labels[2] == Label(
        name="van", color=table["van"].color, id=2, superclass="car", type="any"
    )
    assert [lb.name for lb in labels] == table.names
    from dl_utils.store import AnnotationStore

    media = MediaInfo(name="v.mp4", width=8, height=8, frames=[0])
    with AnnotationStore.create(tmp_path / "job.sqlite", media) as store:
        store.set_labels(labels)
        assert store.labels() == labels


# ------------------------------------------------------------------------------ writers, templates
def test_round_trips(tmp_path, table):
    rich = ClassTable.from_records(
        [
            *table.to_records()[:3],
            {
                "name": "café crème",
                "id": 9,
                "color": "#abcdef",
                "synonyms": "latte|flat white",
                "type": "polygon",
                "description": '= has "quotes", commas; and\nnewlines',
                "notes": "x",
            },
        ]
    )
    for t in (table, rich):
        assert ClassTable.load(t.to_csv(tmp_path / "t.csv")) == t
        assert ClassTable.load(t.to_xlsx(tmp_path / "t.xlsx")) == t
        assert ClassTable.from_records(t.to_records()) == t
    # equality is content, not where a class was defined
    assert ClassTable.from_records(list(reversed(table.to_records()))) == table
    assert ClassTable.from_names(["a", "b"]) != ClassTable.from_names(["b", "a"])


def test_xlsx_writer_layout(tmp_path, table):
    wb = openpyxl.load_workbook(table.to_xlsx(tmp_path / "t.xlsx"))
    assert wb.sheetnames == ["classes", "README"]
    ws = wb["classes"]
    assert [c.value for c in ws[1]] == [
        "name",
        "id",
        "color",
        "superclass",
        "synonyms",
        "type",
        "description",
    ]
    assert all(c.font.b for c in ws[1]) and ws.freeze_panes == "A2"
    assert ws["C3"].fill.fgColor.rgb.endswith(table["car"].color[1:].upper())
    assert ws.column_dimensions["E"].width > ws.column_dimensions["B"].width
    readme = [r[0] for r in wb["README"].iter_rows(min_row=2, values_only=True)]
    assert readme[:7] == ["name", "id", "color", "superclass", "synonyms", "type", "description"]


def test_templates(tmp_path):
    csv_t, xlsx_t = ClassTable.load(template_path("csv")), ClassTable.load(template_path("xlsx"))
    assert csv_t == xlsx_t == template_table()
    assert template_path(".CSV") == template_path("csv") and template_path().suffix == ".xlsx"
    t = csv_t
    assert t.superclasses() == ["vehicle"] and "car" in t.children("vehicle")
    assert t.resolve("automobile") is t["car"] and any(c.description for c in t)
    assert all(c.synonyms for c in t if c.name in ("car", "truck", "bus", "person"))
    # write_template writes what is shipped (the CSV byte for byte; xlsx stamps the save time)
    assert write_template(tmp_path / "new.csv").read_bytes() == template_path("csv").read_bytes()
    assert ClassTable.load(write_template(tmp_path / "new.xlsx")) == xlsx_t
    assert openpyxl.load_workbook(template_path("xlsx")).sheetnames == ["classes", "README"]
    with pytest.raises(InputError, match="new.json"):
        write_template(tmp_path / "new.json")
    with pytest.raises(InputError, match="'ods'"):
        template_path("ods")


def test_write_errors_are_input_errors(tmp_path, table):
    with pytest.raises(InputError, match="cannot write"):
        table.to_csv(tmp_path / "no" / "such" / "dir.csv")
    with pytest.raises(InputError, match="cannot write"):
        table.to_xlsx(tmp_path / "no" / "such" / "dir.xlsx")
