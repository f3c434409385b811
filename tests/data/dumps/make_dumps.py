"""Write the loader's test dumps (one per FORMAT.md case and failure mode) into this folder.

Run `python tests/data/dumps/make_dumps.py` after changing a case; tests/test_load.py checks
that the committed files are exactly what this script writes.
"""

from __future__ import annotations

import sys
import unicodedata
from pathlib import Path

HERE = Path(__file__).resolve().parent

HEADER = "{title}\n{publish}\n{head}\n"

LEAD = (
    "QTO - Sáng nay 31/10, tại TP. Đông Hà, Sở Y tế tỉnh tổ chức hội nghị tổng kết công tác "
    "phòng chống dịch bệnh năm 2024. Ông Lê Văn Hải chủ trì hội nghị."
)
BODY = [
    LEAD,
    "Quang cảnh hội nghị - Ảnh: T.P",
    "Theo báo cáo, năm qua toàn tỉnh không để xảy ra dịch lớn, các ca bệnh được phát hiện sớm.",
    "Hội nghị cũng đề ra nhiều giải pháp cho năm tới, trong đó chú trọng y tế cơ sở.",
    "Trúc Phương",
]
TEASERS_A = [
    "QTO - Chiều nay 30/10, Ban Văn hóa - Xã hội HĐND tỉnh làm việc với Sở Giáo dục về kế...",
    "QTO - Phó Thủ tướng vừa ký Quyết định số 1281/QĐ-TTg ngày 29/10/2024 ban hành Kế hoạch...",
]
TEASERS_B = [
    "TTO - Sáng 1/11, nhiều trường học cho học sinh nghỉ học do mưa lớn...",
    "VOV.VN - Giá xăng dầu dự kiến điều chỉnh tại kỳ điều hành chiều 31/10/2024...",
    "(Dân trí) - Một ngư dân được cứu sống sau 10 giờ trôi dạt trên biển…",
]


def dump(header: str, lines: list[str]) -> str:
    return header + "\n".join(lines) + "\n"


BASIC = dump(HEADER, BODY + TEASERS_A)

# Tones placed as combining marks (cp1258 has only five): the base letter keeps its vowel
# mark (â ê ô ơ ư ă) precomposed.
_TONES = {"\u0300", "\u0301", "\u0303", "\u0309", "\u0323"}


def to_cp1258(text: str) -> bytes:
    out = []
    for char in unicodedata.normalize("NFC", text):
        parts = unicodedata.normalize("NFD", char)
        tones = "".join(c for c in parts if c in _TONES)
        base = unicodedata.normalize("NFC", "".join(c for c in parts if c not in _TONES))
        out.append((base + tones).encode("cp1258"))
    return b"".join(out)


# VNI Windows and TCVN3 (ABC) renderings of a few Vietnamese lines, byte for byte.
VNI = (
    b"Ng\xe0y h\xf4i th\xe1o\n{publish}\n{head}\n"
    b"S\xe1ng nay 31/10, ta\xefi TP. \xd1o\xe2ng Ha\xf8, Ban Tuye\xe2n gia\xf9o T\xe6nh u\xfby "
    b"to\xe5 ch\xf6\xf9c ho\xe4i tha\xfbo ve\xe0 chuye\xe5n \xf1o\xe5i so\xe1 trong ca\xf9c "
    b"c\xf6 quan \xf1a\xfbng.\nVi\xe6e\xe4t Nam \xf1a\xf5 \xf1\xf6\xf4\xefc nhie\xe0u "
    b"ke\xe1t qua\xfb quan tro\xefng.\n"
)
TCVN3 = (
    b"{title}\n{publish}\n{head}\n"
    b"S\xb8ng nay 31/10, t\xb9i TP. \xa7\xabng H\xb5, Ban Tuy\xaan gi\xb8o T\xaenh \xf1y "
    b"t\xaa ch\xf8c h\xe9i th\xb6o v\xd2 chuy\xd3n \xae\xe8i s\xe8 trong c\xb8c c\xac quan "
    b"\xae\xb6ng.\nVi\xd6t Nam \xae\xb7 \xae\xad\xeec nhi\xd2u k\xd5t qu\xb6 quan tr\xe4ng.\n"
)

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + bytes(range(256)) * 4


def caption_forms() -> str:
    return dump(
        "Các dạng chú thích ảnh\n31/10/2024 09:15\n{head}\n",
        [
            "QTO - Lead của bài viết về các dạng chú thích ảnh trong báo điện tử.",
            "Quang cảnh hội thảo - Ảnh: T.P",
            "Đại biểu phát biểu \u2013 Ảnh: N.V.",
            "Người dân đón xem (Ảnh: Minh Đức)",
            "ẢNH: NGỌC VĂN",
            "Cánh đồng lúa chín - Ảnh minh họa",
            "Cánh đồng lúa chín vàng - Ảnh minh hoạ",
            "Farmers at work - Photo: Thu Ha",
            "Theo tác giả bức ảnh: đây là khoảnh khắc đẹp nhất mà anh từng chụp được trong đời.",
            "Đoạn cuối của bài viết.",
        ],
    )


def cases() -> dict[str, bytes]:
    utf8 = BASIC.encode("utf-8")
    files: dict[str, bytes] = {
        "basic_utf8.txt": utf8,
        "utf8_bom.txt": b"\xef\xbb\xbf" + utf8,
        "utf16le_bom.txt": BASIC.encode("utf-16"),  # Python writes LE with BOM
        "utf16be_bom.txt": b"\xfe\xff" + BASIC.encode("utf-16-be"),
        "cp1258.txt": to_cp1258(BASIC),
        "nfd.txt": unicodedata.normalize("NFD", BASIC).encode("utf-8"),
        "crlf.txt": BASIC.replace("\n", "\r\n").encode("utf-8"),
        "cr_only.txt": BASIC.replace("\n", "\r").encode("utf-8"),
        "formfeed_u2028.txt": dump(
            HEADER,
            [
                "QTO - Sáng nay 31/10, hội nghị\fbắt đầu\u2028lúc 8 giờ\u2029tại hội trường.",
                "Đoạn hai\u0085của bài.",
            ],
        ).encode("utf-8"),
        "nbsp_dateline.txt": dump(
            HEADER,
            [
                "QTO\u00a0-\u00a0Sáng nay 31/10, hội nghị bắt đầu lúc 8 giờ.",
                "Đoạn hai của bài.",
                "QTO\u00a0- Chiều nay 30/10, một tin khác ngày 29/10/2024...",
                "TTO -\u202fTin thứ hai...",
            ],
        ).encode("utf-8"),
        "zero_width.txt": dump(
            "Tiêu\u200b đề\u200d có\ufeff ký tự ẩn\n{publish}\n{head}\n",
            ["QTO -\u200b Đoạn\u200b mở đầu\u2060 của bài.\t\tCó tab.", "Đoạn hai."],
        ).encode("utf-8"),
        "soft_hyphen.txt": dump(
            "Chuyển đổi\u00ad số ở Quảng\u00ad Trị\n{publish}\n{head}\n",
            ["Đoạn mở\u00ad đầu nói về chuyển\u00ad đổi số.", "Đoạn hai."],
        ).encode("utf-8"),
        "empty.txt": b"",
        "blank.txt": b"\n\n  \n",
        "binary.bin.txt": PNG,
        "placeholders_only.txt": b"{title}\n{publish}\n{head}\n\n\n",
        "vni.txt": VNI,
        "tcvn3.txt": TCVN3,
        "duplicate_a.txt": utf8,
        "duplicate_b.txt": b"\xff\xfe" + dump(HEADER, BODY + TEASERS_B).encode("utf-16-le"),
        "duplicate_c_cp1258.txt": to_cp1258(dump(HEADER, BODY + TEASERS_B[:1])),
        "ellipsis_paragraph.txt": dump(
            "Bài có đoạn kết bằng dấu ba chấm\n31/10/2024 09:15\n{head}\n",
            [
                "QTO - Đoạn mở đầu.",
                "Các tham luận xoay quanh những nội dung như: chuyển đổi số, cải cách hành "
                "chính...",
                "QTO - Tin khác thứ nhất...",
                "QTO - Tin khác thứ hai…",
            ],
        ).encode("utf-8"),
        "caption_forms.txt": caption_forms().encode("utf-8"),
        "anh_midsentence.txt": dump(
            "Ảnh giữa câu\n31/10/2024 09:15\n{head}\n",
            [
                "Ông cho biết bức ảnh: đây là kỷ niệm đẹp nhất của gia đình, được chụp năm 1975.",
                "Đoạn hai.",
            ],
        ).encode("utf-8"),
        "bad_date_31_02.txt": dump(
            "Ngày không có thật\n31/02/2025 08:00\n{head}\n", ["Đoạn mở đầu.", "Đoạn hai."]
        ).encode("utf-8"),
        "header_filled.txt": dump(
            "Tiêu đề thật của bài\nThứ năm, 31/10/2024, 09:15 (GMT+7)\n"
            "QTO - Sapo của bài: tỉnh tổ chức hội nghị tổng kết.\n",
            ["Đoạn thân bài thứ nhất.", "Đoạn thân bài thứ hai.", "Theo TTXVN"],
        ).encode("utf-8"),
        "datelines.txt": dump(
            "Các dạng dateline\n31/10/2024 09:15\n{head}\n",
            [
                "QTO- Đoạn mở đầu.",
                "By Thu Ha",
                "QTO - Tin 1...",
                "QTO- Tin 2...",
                "(QT) - Tin 3...",
                "(QBĐT) - Tin 4...",
                "TTO - Tin 5...",
                "TPO - Tin 6...",
                "(Dân trí) - Tin 7...",
                "VOV.VN - Tin 8...",
                "(PLO) \u2013 Tin 9...",
                "VTV.vn - Tin 10...",
                "(Chinhphu.vn) - Tin 11...",
                "TTO \u2014 Tin 12...",
            ],
        ).encode("utf-8"),
        "no_date.txt": dump(
            "Bài không có ngày\n{publish}\n{head}\n",
            ["Thư viện tỉnh ra mắt thư viện số cho học sinh.", "Đoạn hai.", "QTO - Tin khác..."],
        ).encode("utf-8"),
        "year_nearest.txt": dump(
            HEADER,
            [
                "Sáng nay 2/1, tỉnh tổ chức lễ ra quân đầu năm.",
                "Đoạn hai, nhắc lại sự kiện ngày 2/9/1945.",
                "QTO - Ngày 30/12/2024, tỉnh tổng kết năm...",
            ],
        ).encode("utf-8"),
        "duplicate_lines.txt": dump(
            "Dòng lặp\n31/10/2024 09:15\n{head}\n",
            ["Đoạn mở đầu.", "Đoạn mở đầu.", "Đoạn hai.", "", "Đoạn hai.", "Đoạn ba."],
        ).encode("utf-8"),
        "english.txt": dump(
            "{title}\n2024-10-29T10:30:00+07:00\n{head}\n",
            [
                "Coffee farmers in Lam Giang are replanting with arabica. Prices stay high.",
                "A farmer sorts coffee cherries - Photo: Lam Giang Times",
                "Officials expect a larger specialty harvest this season.",
                "By Thu Ha",
            ],
        ).encode("utf-8"),
    }
    publish_layouts = {
        "date_dmy_hm.txt": "31/10/2024 09:15",
        "date_hm_dmy.txt": "18:02 26/08/2019",
        "date_pipe_gmt.txt": "09:11 | 09/09/2022 GMT+7",
        "date_weekday_dash.txt": "Thứ năm - 09/03/2017 21:41",
        "date_weekday_comma_gmt.txt": "Thứ năm, 31/10/2024, 09:15 (GMT+7)",
        "date_ngay_thang_nam.txt": "Chủ nhật, ngày 08 tháng 12 năm 2024",
        "date_sql.txt": "2019-08-03 09:23:32",
        "date_iso.txt": "2024-10-31T09:15:00+07:00",
        "date_iso_utc.txt": "2024-10-31T02:15:00Z",
        "date_gmt8.txt": "31/10/2024 10:15 GMT+8",
    }
    for name, line in publish_layouts.items():
        files[name] = dump(f"Tiêu đề\n{line}\n{{head}}\n", ["Đoạn mở đầu.", "Đoạn hai."]).encode()
    lead_layouts = {
        "lead_sang_nay.txt": "Sáng nay 31/10",
        "lead_chieu_nay.txt": "Chiều nay 29/10",
        "lead_toi_nay.txt": "Tối nay 30/10",
        "lead_hom_nay.txt": "Hôm nay 21/11",
        "lead_hom_qua.txt": "Hôm qua 15-11",
        "lead_ngay_dot.txt": "Ngày 27.10",
    }
    for name, opening in lead_layouts.items():
        files[name] = dump(
            HEADER,
            [
                f"QTO - {opening}, tỉnh tổ chức hội nghị.",
                "Đoạn hai.",
                "QTO - Tin khác ngày 20/11/2024...",
            ],
        ).encode("utf-8")
    return files


def main() -> int:
    for name, data in cases().items():
        (HERE / name).write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
