"""Texts written for Cellar's embedding tests: a small retrieval set (30 passages from the working
life of a clinic, a bank and a factory, and 10 questions, each answered by exactly one passage),
and short texts in Vietnamese."""

from __future__ import annotations

PASSAGES = [
    # 0-9: a clinic
    "Patients with a fever above 39 degrees are seen by the triage nurse first, before anyone "
    "who arrived earlier with a minor complaint.",
    "The clinic's pharmacy opens at eight in the morning and closes at six in the evening; on "
    "Sundays prescriptions are collected from the hospital across the street.",
    "Blood samples taken after two in the afternoon are sent to the central laboratory the next "
    "morning, so their results come a day later.",
    "Children under five receive the measles vaccine in two doses, the second one at least four "
    "weeks after the first.",
    "A patient may read their own medical record by asking at the front desk; a copy costs "
    "nothing the first time each year.",
    "The X-ray room is on the second floor; pregnant patients must tell the radiographer before "
    "any image is taken.",
    "Physiotherapy sessions last forty-five minutes and are booked in blocks of six.",
    "Visitors to the ward are allowed between three and seven in the afternoon, two at a time "
    "per bed.",
    "Insulin is stored in the refrigerator in the treatment room, between two and eight degrees, "
    "and is never frozen.",
    "The night doctor is reached by the red telephone at the nurses' station.",
    # 10-19: a bank
    "A lost debit card is blocked at once by calling the number on the back of the statement; a "
    "new card arrives by post within five working days.",
    "Transfers to another bank made before three in the afternoon arrive the same day; later "
    "ones arrive the next working day.",
    "The savings account pays interest monthly, at a rate that changes with the central bank's "
    "base rate.",
    "A mortgage application needs the last three payslips, a year of bank statements and a "
    "valuation of the property.",
    "Cash deposits larger than ten thousand must be explained with a document showing where the "
    "money came from.",
    "The branch safe has a time lock and cannot be opened between seven in the evening and "
    "seven in the morning.",
    "Customers can raise their daily card spending limit in the mobile app, up to five thousand.",
    "Foreign currency must be ordered two days in advance and is collected at the branch with an "
    "identity document.",
    "A cheque is cleared in three working days; until then the money shows as pending.",
    "Business accounts pay a fixed monthly fee and no charge per transaction.",
    # 20-29: a factory
    "The packaging line stops automatically when a carton jams in the folding station.",
    "Forklift drivers must renew their licence every three years with a practical test.",
    "Hearing protection is required in the press hall, where noise exceeds eighty-five decibels.",
    "The boiler is inspected every spring by an external engineer, who signs the pressure "
    "certificate.",
    "Raw material deliveries are accepted at gate two between six and ten in the morning.",
    "Each shift begins with a ten-minute safety briefing at the team board.",
    "Defective parts are tagged in red and moved to the quarantine cage until quality decides.",
    "The compressed air system leaks cost more than the lighting of the whole plant, so leaks "
    "are reported with a yellow tag.",
    "Welding is only allowed in the welding bay, where the extraction fans remove the fumes.",
    "The canteen serves a hot meal at noon and sandwiches on the night shift.",
]

QUESTIONS = [
    ("When can I pick up my medicine on a Sunday?", 1),
    ("How long after the first measles shot is the second one given?", 3),
    ("What temperature should insulin be kept at?", 8),
    ("I lost my bank card, what should I do?", 10),
    ("When does money sent to another bank arrive?", 11),
    ("What documents do I need to apply for a home loan?", 13),
    ("How often do forklift operators have to renew their license?", 21),
    ("Do I need ear protection near the presses?", 22),
    ("Where do trucks unload raw materials and at what time?", 24),
    ("What happens to parts that fail inspection?", 26),
]

VIETNAMESE = [
    "Bệnh nhân sốt cao trên 39 độ được y tá khám trước.",
    "Nhà thuốc mở cửa lúc tám giờ sáng và đóng cửa lúc sáu giờ chiều.",
    "Trẻ em dưới năm tuổi được tiêm vắc xin sởi hai lần.",
    "Giờ thăm bệnh từ ba giờ đến bảy giờ chiều.",
    "Tôi bị mất thẻ ngân hàng, tôi phải làm gì?",
    "Chuyển khoản trước ba giờ chiều sẽ đến trong ngày.",
    "Tài khoản tiết kiệm trả lãi hàng tháng.",
    "Hồ sơ vay mua nhà cần ba phiếu lương gần nhất.",
    "Ngoại tệ phải đặt trước hai ngày.",
    "Dây chuyền đóng gói tự động dừng khi thùng bị kẹt.",
    "Công nhân phải đeo nút tai trong xưởng dập.",
    "Nồi hơi được kiểm tra mỗi mùa xuân.",
    "Mỗi ca làm việc bắt đầu bằng mười phút hướng dẫn an toàn.",
    "Nhà ăn phục vụ bữa trưa nóng lúc mười hai giờ.",
    "Hàng lỗi được gắn thẻ đỏ và đưa vào khu cách ly.",
    "Hà Nội là thủ đô của Việt Nam.",
    "Hôm nay trời mưa to ở Thành phố Hồ Chí Minh.",
    "Cà phê sữa đá là thức uống quen thuộc buổi sáng.",
    "Xe buýt số mười chạy từ bến xe đến sân bay.",
    "Thư viện đóng cửa vào ngày chủ nhật.",
]
