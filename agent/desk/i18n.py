"""The desk's labels and refusals in Chinese (the default) and English.

``t(key)`` gives a label in the page's language; an unknown key raises ``KeyError``, so a template that
names a label nobody wrote fails its test. ``refusal(code, lang, extra)`` turns an error's code into the
sentence a cashier or doctor acts on: the API's messages are written for the HIS's developers (English,
with field paths); the desk speaks to the person at the counter. An unknown code falls back to the
API's own message, so a new refusal is never silent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["DEFAULT", "LANGS", "MESSAGES", "REFUSALS", "refusal", "translator"]

LANGS = ("zh", "en")
DEFAULT = "zh"

#: key → (Chinese, English)
MESSAGES: dict[str, tuple[str, str]] = {
    "app": ("医保结算台", "Insurance desk"),
    "lang": ("English", "中文"),
    "sign_in": ("登录", "Sign in"),
    "sign_out": ("退出", "Sign out"),
    "sign_in_help": (
        "请输入您本人的令牌（以 ybu_ 开头，由管理员用 yibao-agent users add 发给您）。",
        "Enter your own token (it starts with ybu_; your administrator made it with yibao-agent users add).",
    ),
    "token": ("用户令牌", "User token"),
    "sign_in_stale": ("登录表单已过期，请重新提交。", "The sign-in form was stale; submit it again."),
    "signed_in_as": ("当前用户", "Signed in"),
    "role_cashier": ("收费员", "cashier"),
    "role_doctor": ("医生", "doctor"),
    "cashier_title": ("收费结算", "Cashier"),
    "doctor_title": ("医生工作站", "Doctor"),
    "bill": ("账单", "Bill"),
    "his_setl_no": ("HIS 结算号", "HIS bill no."),
    "item": ("项目", "Item"),
    "code": ("编码", "Code"),
    "qty": ("数量", "Qty"),
    "price": ("单价（元）", "Price (yuan)"),
    "amount": ("金额（元）", "Amount (yuan)"),
    "type": ("类别", "Type"),
    "total": ("合计（元）", "Total (yuan)"),
    "patient": ("患者", "Patient"),
    "lost_card": ("挂失社保卡", "Report a lost card"),
    "card_sn": ("卡识别码", "Card identification code"),
    "lost_reason": ("挂失原因", "Reason"),
    "report_lost": ("挂失", "Report lost"),
    "lost_reported": (
        "已登记挂失（日志序号 {seq}），将上传中心；中心审核后该卡列入黑名单。",
        "Loss reported (log seq {seq}); it goes to the centre, where an operator puts the card on the "
        "blacklist.",
    ),
    "card_notice": ("卡片通知", "Card notice"),
    "card_replaced_title": ("此卡已换发新卡", "This card was replaced"),
    "card_replaced_body": (
        "社保经办机构已为该患者换发新卡（新卡识别码 {new_card_sn}）。"
        "请勿用此旧卡结算：请患者出示新卡并重新读卡；"
        "未带新卡时可改用医保电子凭证或自费结算。",
        "The card office replaced this card (new card {new_card_sn}). Do not settle with this old card: ask "
        "the patient for the new card and read it; without it, use the e-voucher or settle as self-pay.",
    ),
    "card_fields_outdated": (
        "卡内以下信息已更正，以经办机构为准：",
        "The card office corrected this data; what the card carries is outdated: ",
    ),
    "yuan": ("元", "yuan"),
    "correction_reason": ("原因", "Reason"),
    "card_notices": ("卡片通知", "Notices for this card"),
    "notice_topup": ("充值", "Top-up"),
    "notice_balance": ("余额", "Balance"),
    "notice_message": ("通知", "Notice"),
    "notice_valid": ("有效期 {start} 至 {end}", "valid {start} to {end}"),
    "field_psn_no": ("社会保障号码", "social-security number"),
    "field_psn_name": ("姓名", "name"),
    "field_gend": ("性别", "sex"),
    "field_brdy": ("出生日期", "birth date"),
    "field_naty": ("民族", "ethnicity"),
    "field_insuplc_admdvs": ("参保地", "insured place"),
    "field_issued": ("发卡日期", "issue date"),
    "field_expires": ("有效期", "expiry date"),
    "read_card": ("读卡", "Read card"),
    "scan_qr": ("扫码（电子凭证）", "Scan code (e-voucher)"),
    "qr_help": ("扫描或粘贴患者的医保电子凭证二维码内容", "Scan or paste the patient's e-voucher code"),
    "verify_qr": ("核验", "Verify"),
    "name": ("姓名", "Name"),
    "id_no": ("证件号", "ID number"),
    "gend": ("性别", "Sex"),
    "gend_1": ("男", "male"),
    "gend_2": ("女", "female"),
    "gend_9": ("未知", "unknown"),
    "insuplc": ("参保地", "Insured in"),
    "method": ("身份核验", "Identified by"),
    "method_card": ("社保卡（已验真）", "social-security card (authenticated)"),
    "method_evoucher": ("医保电子凭证（已验签）", "e-voucher (signature verified)"),
    "card_expires": ("有效期至", "Valid until"),
    "no_identity": (
        "请患者插卡后点“读卡”，或扫描电子凭证。",
        "Insert the patient's card and press Read card, or scan the e-voucher.",
    ),
    "preview": ("预结算", "Preview"),
    "split_fund": ("统筹基金支付", "Fund pays"),
    "split_hifp": ("基本医疗统筹", "Basic pooled fund"),
    "split_hifmi": ("大病保险", "Critical-illness insurance"),
    "split_hifob": ("大额补充", "Large-amount supplement"),
    "split_acct": ("个人账户支付", "Personal account"),
    "split_cash": ("现金支付", "Cash"),
    "split_not_computed": (
        "未计算分割（尚无待遇政策或政策不适用），由 HIS 提供金额：",
        "The split was not computed (no benefit policy yet, or none applies); amounts as the HIS gave them: ",
    ),
    "self_pay_lines": ("按规则全自费的明细", "Lines wholly self-paid by rule"),
    "prompts_at_counter": ("规则提示", "Rule prompts"),
    "settle": ("确认结算", "Settle"),
    "settling": ("处理中…", "Working…"),
    "receipt": ("结算单", "Receipt"),
    "setl_id": ("结算流水号", "Settlement id"),
    "settled_at_seq": ("序号", "Seq"),
    "settled_ok": ("结算成功，已保存。", "Settled and stored."),
    "already_settled": (
        "该账单已结算（重复提交未再次结算）。",
        "This bill was already settled (the repeat settled nothing).",
    ),
    "refused": ("拒绝", "Refused"),
    "nothing_settled": ("未结算，未产生任何费用记录。", "Nothing was settled."),
    "centre_offline": (
        "中心暂不可达：仅使用本院历史，结算不受影响。",
        "The centre is not reachable: this hospital's history only; settling is not affected.",
    ),
    "walk_in": ("新建账单（无 HIS 账单的患者）", "New bill (patient without a HIS bill)"),
    "dise_codg": ("诊断编码", "Diagnosis code"),
    "med_type": ("医疗类别", "Medical type"),
    "insutype": ("险种", "Insurance type"),
    "psn_type": ("人员类别", "Person type"),
    "create_bill": ("建立账单", "Create bill"),
    "medications": ("近期用药（各医院）", "Recent medication (every hospital)"),
    "hospital": ("医院", "Hospital"),
    "this_hospital": ("本院", "this hospital"),
    "other_hospital": ("外院", "another hospital"),
    "date": ("日期", "Date"),
    "days_supply": ("天数", "Days"),
    "supply_until": ("用至", "Supply until"),
    "no_medications": ("近期无用药记录。", "No medication in this period."),
    "prescription_check": ("处方审核提示", "Prescription prompts"),
    "no_prompts": ("无提示。", "No prompts."),
    "evidence": ("依据", "Evidence"),
    "rule": ("规则", "Rule"),
    "severity": ("级别", "Severity"),
    "override": ("坚持用药（说明理由）", "Override (give a reason)"),
    "override_reason": ("理由", "Reason"),
    "overridden_by": ("已由医生坚持，理由：", "Overridden by the doctor, reason: "),
    "override_recorded": (
        "已记录坚持用药及理由，随本次结算上传。",
        "The override and its reason are recorded and travel with this visit's settlement.",
    ),
    "not_overridable": ("此规则不允许坚持。", "This rule allows no override."),
    "shadow": ("试运行", "trial"),
    "cross_hospital_ok": (
        "已包含其他医院的记录（中心）。",
        "Includes every hospital's records (from the centre).",
    ),
    "open_bill": ("打开账单", "Open bill"),
    "patient_by_card": ("读卡查看患者", "Read card for a patient"),
    "error_title": ("无法继续", "Cannot continue"),
    "back": ("返回", "Back"),
    "wrong_role": (
        "此页面供{role}使用；您以 {who} 登录。请用{role}本人的令牌登录。",
        "This page is for a {role}; you are signed in as {who}. Sign in with a {role}'s own token.",
    ),
    "session_over": (
        "登录已过期，请重新登录后再提交。",
        "Your sign-in has ended; sign in again and resubmit.",
    ),
}

#: error code → (Chinese, English): what the person at the desk does. ``{reason}`` is the list's reason.
REFUSALS: dict[str, tuple[str, str]] = {
    "blacklisted:card": (
        "此卡已被列入黑名单（原因：{reason}）。请勿用此卡结算；告知患者卡已冻结，请其联系社保经办机构；可改用医保电子凭证或自费结算。",
        "This card is on the blacklist (reason: {reason}). Do not settle with it: tell the patient the card "
        "is blocked and to contact the social-insurance agency; use the e-voucher instead, or settle as "
        "self-pay.",
    ),
    "blacklisted:person": (
        "该参保人医保待遇已暂停（原因：{reason}）。请按自费结算，并请患者联系社保经办机构。",
        "This person's insurance benefits are suspended (reason: {reason}). Settle as self-pay and refer the "
        "patient to the social-insurance agency.",
    ),
    "blacklisted:employer": (
        "该参保单位医保已暂停（原因：{reason}）。请按自费结算，并请患者联系单位或社保经办机构。",
        "The employer's insurance is suspended (reason: {reason}). Settle as self-pay and refer the patient "
        "to their employer or the social-insurance agency.",
    ),
    "blacklisted:doctor": (
        "接诊医生的医保服务已暂停（原因：{reason}）。医保基金不能支付本次就诊：请由其他医生接诊或自费结算。",
        "The doctor's insurance service is suspended (reason: {reason}): the fund cannot pay for this visit; "
        "have another doctor see the patient, or settle as self-pay.",
    ),
    "blacklisted:hospital": (
        "本院医保协议已暂停（原因：{reason}）。请按自费结算，并报告医院管理部门。",
        "This hospital's insurance agreement is suspended (reason: {reason}). Settle as self-pay and tell "
        "the hospital's management.",
    ),
    "card_replaced": (
        "此卡已换发新卡（新卡识别码 {new_card_sn}，原因：{reason}）。"
        "请勿用旧卡结算：请患者出示新卡并重新读卡；未带新卡时可改用医保电子凭证或自费结算。",
        "This card was replaced by card {new_card_sn} (reason: {reason}). Do not settle with the old card: "
        "ask the patient for the new card and read it; without it, use the e-voucher or settle as self-pay.",
    ),
    "card_expired": (
        "社保卡已过有效期。请患者到社保经办机构换卡；可改用医保电子凭证。",
        "The card has expired. The patient must renew it at the social-insurance agency; use the "
        "e-voucher instead.",
    ),
    "card_removed": (
        "读卡过程中卡被拔出。请患者重新插卡，读卡完成前不要拔卡，然后再点“读卡”。",
        "The card was removed during the read. Ask the patient to insert it again and leave it in until "
        "the read is done, then press Read card.",
    ),
    "no_card": (
        "读卡器中没有卡。请患者插入社保卡后再点“读卡”。",
        "There is no card in the reader. Ask the patient to insert the card, then press Read card.",
    ),
    "no_reader": (
        "未找到读卡器。请检查读卡器连接，或联系信息科。",
        "No card reader found. Check the reader's cable, or call IT.",
    ),
    "card_service_down": (
        "读卡服务（pcscd）未运行。请联系信息科。",
        "The card service (pcscd) is not running. Call IT.",
    ),
    "reader_busy": ("读卡器正忙，请稍后再试。", "The reader is busy; try again in a moment."),
    "psam_missing": (
        "读卡器中的 PSAM 安全模块缺失。请联系信息科。",
        "The reader's PSAM security module is missing. Call IT.",
    ),
    "card_auth_failed": (
        "此卡未通过真伪验证（可能为伪造或复制卡）。请勿结算，请核实患者身份并报告。",
        "This card failed the authenticity check (it may be counterfeit or copied). Do not settle; check "
        "the patient's identity and report it.",
    ),
    "card_unreadable": (
        "卡片无法读取（可能损坏）。请擦拭后重试，或改用电子凭证。",
        "The card cannot be read (it may be damaged). Wipe it and retry, or use the e-voucher.",
    ),
    "not_social_security_card": (
        "这不是社保卡。请患者出示社保卡。",
        "This is not a social-security card. Ask for the patient's social-security card.",
    ),
    "evoucher_expired": (
        "电子凭证已过期。请患者在手机上刷新二维码后重新扫码。",
        "The e-voucher has expired. Ask the patient to refresh the code on their phone and scan again.",
    ),
    "evoucher_replayed": (
        "该电子凭证已被使用过。请患者刷新二维码后重新扫码。",
        "This e-voucher was used before. Ask the patient to refresh the code and scan again.",
    ),
    "evoucher_bad_signature": (
        "电子凭证验签失败（非官方凭证）。请勿结算，请改用社保卡。",
        "The e-voucher's signature is not valid. Do not settle with it; use the card.",
    ),
    "evoucher_unknown_issuer": (
        "电子凭证的签发方不受信任。请改用社保卡，或联系信息科。",
        "The e-voucher's issuer is not trusted here. Use the card, or call IT.",
    ),
    "evoucher_malformed": (
        "扫码内容不是医保电子凭证。请重新扫码。",
        "What was scanned is not an e-voucher. Scan again.",
    ),
    "evoucher_not_yet_valid": (
        "电子凭证尚未生效（时钟不一致）。请联系信息科检查本机时间。",
        "The e-voucher is not valid yet (clocks differ). Call IT to check this computer's clock.",
    ),
    "rule_refused": (
        "医保规则拒绝本次结算：{reason}。请与开方医生核对；规则允许时可由医生在医生页面坚持并说明理由。",
        "A rule refuses this settlement: {reason}. Check with the prescribing doctor; where the rule "
        "allows it, the doctor may override it on the doctor's page with a reason.",
    ),
    "validation_failed": (
        "账单数据不完整或有误：{reason}。请在 HIS 中更正后重新发送账单。",
        "The bill's data is incomplete or wrong: {reason}. Correct it in the HIS and send the bill again.",
    ),
    "his_setl_no_conflict": (
        "该 HIS 结算号已用于另一笔不同的结算。请在 HIS 中核对，不要重复结算。",
        "This HIS bill number was already used for a different settlement. Check it in the HIS; do not "
        "settle twice.",
    ),
    "outbox_full": (
        "本机待上传数据已满，暂停结算。请立即联系信息科。",
        "The agent's upload queue is full and settling is paused. Call IT now.",
    ),
    "disk_nearly_full": (
        "本机磁盘空间不足，暂停结算。请立即联系信息科。",
        "The agent's disk is nearly full and settling is paused. Call IT now.",
    ),
    "store_failed": (
        "结算数据无法保存。请联系信息科；不要重复收费。",
        "The settlement could not be stored. Call IT; do not charge twice.",
    ),
    "resync_pending": (
        "本机正在与中心对账，暂停结算。请稍候或联系信息科。",
        "The agent is reconciling with the centre; settling is paused. Wait or call IT.",
    ),
    "unauthorized": (
        "令牌无效（未知或已更换）。请向管理员索取您本人的新令牌。",
        "That token is not valid (unknown or replaced). Ask your administrator for your own new token.",
    ),
    "token_disabled": ("您的账号已停用。请联系管理员。", "Your account is disabled. Ask your administrator."),
    "desk_sign_in_refused": (
        "HIS 系统令牌不能用于登录：请用您本人的令牌（ybu_…）。",
        "The HIS system token cannot sign in: use your own token (ybu_…).",
    ),
    "role_forbidden": ("您的角色不能执行此操作。", "Your role may not do this."),
    "override_needs_doctor": (
        "只有医生本人登录后才能坚持用药。",
        "Only a doctor, signed in with their own token, may override.",
    ),
    "override_doctor_mismatch": (
        "坚持用药须由医生本人名义作出。",
        "A doctor overrides only in their own name.",
    ),
    "desk_override_invalid:no_reason": (
        "未记录：坚持用药必须填写理由（2 至 200 字）。",
        "Not recorded: an override needs a reason (2 to 200 characters).",
    ),
    "desk_override_invalid:not_shown": (
        "未记录：本账单未显示该提示，请刷新页面。",
        "Not recorded: this prompt was not shown for this bill; reload the page.",
    ),
    "desk_override_invalid:not_overridable": (
        "未记录：此规则不允许坚持。",
        "Not recorded: this rule allows no override.",
    ),
    "desk_override_invalid:settled": (
        "未记录：本账单已结算。",
        "Not recorded: this bill is already settled.",
    ),
    "desk_override_invalid:other_doctor": (
        "未记录：另一位医生已在本账单上坚持用药。",
        "Not recorded: another doctor already overrode on this bill.",
    ),
    "desk_patient_mismatch": (
        "此卡/凭证不是本账单的患者。请核对到柜台的患者，或由 HIS 为此患者重新发送账单。",
        "This card or code is not this bill's patient. Check who is at the counter, or have the HIS post "
        "the bill for this patient.",
    ),
    "desk_bill_not_found": (
        "找不到该账单（未发送、已过期或本机已重启）。请从 HIS 重新打开账单。",
        "No such bill here (never sent, expired, or the agent restarted). Open the bill again from the HIS.",
    ),
    "csrf_invalid": (
        "表单已过期或不是来自本页面。请刷新页面后重新提交。",
        "The form is stale or did not come from this page. Reload the page and submit again.",
    ),
    "origin_forbidden": (
        "表单来自其他网站，已拒绝。请在本机地址打开结算台。",
        "The form came from another site and was refused. Open the desk at the agent's own address.",
    ),
    "not_found": ("本机未启用此功能。请联系信息科。", "This agent does not run this function. Call IT."),
}


def translator(lang: str) -> Callable[..., str]:
    index = 1 if lang == "en" else 0

    def t(key: str, **values: Any) -> str:
        text = MESSAGES[key][index]
        return text.format(**values) if values else text

    return t


def refusal(code: str, lang: str, error: dict[str, Any]) -> str:
    """The desk's sentence for an error body ``{"code", "message", ...}`` in ``lang``."""
    index = 1 if lang == "en" else 0
    qualifier = error.get("list_type") if code == "blacklisted" else error.get("problem")
    key = f"{code}:{qualifier}" if qualifier else code
    if key not in REFUSALS and code.startswith("evoucher_"):
        key = "evoucher_malformed" if code not in REFUSALS else code
    if key not in REFUSALS:
        return str(error.get("message") or code)
    reason = error.get("reason")
    if code in ("rule_refused", "validation_failed"):
        parts = [str(d.get("message") if code == "rule_refused" else f"{d.get('field')}: {d.get('message')}")
                 for d in error.get("details") or []]  # fmt: skip
        reason = "; ".join(parts) or error.get("message")
    return REFUSALS[key][index].format(
        reason=reason or ("未说明" if index == 0 else "not given"),
        new_card_sn=error.get("new_card_sn") or "—",
    )
