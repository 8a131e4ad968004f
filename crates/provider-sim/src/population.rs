//! The synthetic population: persons in households, and companies, generated from one seed.
//!
//! Everything an agency would know about a person is decided here, once, so that every dataset
//! rendered from it agrees (name, ID, household, welfare status, vehicles, employer, income).

use crate::date::Date;
use mydata_core::id_number::{BusinessId, IdNumber, Sex};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::{HashMap, HashSet};

/// Households are generated until at least this many persons exist.
pub const MIN_PERSONS: usize = 200;
/// Companies generated.
pub const COMPANIES: usize = 24;

/// One county or city: its ID area letter, 最低生活費 (see fields-notes.md; placeholder figures) and
/// some districts with villages and streets.
struct County {
    name: &'static str,
    letter: char,
    min_living_cost: u32,
    towns: &'static [(
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
    )],
}

const COUNTIES: &[County] = &[
    County {
        name: "臺北市",
        letter: 'A',
        min_living_cost: 20_379,
        towns: &[
            (
                "大安區",
                &["龍安里", "錦安里", "古莊里"],
                &["和平東路二段", "新生南路三段", "復興南路一段"],
            ),
            ("信義區", &["三張里", "興雅里"], &["松仁路", "基隆路一段"]),
        ],
    },
    County {
        name: "新北市",
        letter: 'F',
        min_living_cost: 16_900,
        towns: &[
            (
                "板橋區",
                &["留侯里", "新埔里"],
                &["文化路一段", "中山路二段"],
            ),
            (
                "新店區",
                &["大豐里", "中正里"],
                &["北新路三段", "中興路二段"],
            ),
        ],
    },
    County {
        name: "桃園市",
        letter: 'H',
        min_living_cost: 16_768,
        towns: &[
            ("蘆竹區", &["宏竹里", "南崁里"], &["大竹北路", "南崁路一段"]),
            ("中壢區", &["中央里", "興仁里"], &["中正路", "環北路"]),
        ],
    },
    County {
        name: "臺中市",
        letter: 'B',
        min_living_cost: 16_077,
        towns: &[
            (
                "西屯區",
                &["福安里", "何厝里"],
                &["台灣大道三段", "文心路二段"],
            ),
            ("北區", &["賴村里", "健行里"], &["三民路三段", "五權路"]),
        ],
    },
    County {
        name: "臺南市",
        letter: 'D',
        min_living_cost: 15_515,
        towns: &[("東區", &["大學里", "東光里"], &["大學路", "東門路二段"])],
    },
    County {
        name: "高雄市",
        letter: 'E',
        min_living_cost: 16_040,
        towns: &[
            ("苓雅區", &["林圍里", "普天里"], &["四維三路", "青年一路"]),
            ("左營區", &["祥和里", "菜公里"], &["博愛二路", "翠華路"]),
        ],
    },
    County {
        name: "新竹縣",
        letter: 'J',
        min_living_cost: 15_515,
        towns: &[("竹北市", &["北崙里", "斗崙里"], &["光明六路", "縣政九路"])],
    },
    County {
        name: "花蓮縣",
        letter: 'U',
        min_living_cost: 15_515,
        towns: &[("花蓮市", &["國光里", "民權里"], &["中山路", "林森路"])],
    },
];

const SURNAMES: &[&str] = &[
    "陳", "林", "黃", "張", "李", "王", "吳", "劉", "蔡", "楊", "許", "鄭", "謝", "郭", "洪", "曾",
    "邱", "廖", "賴", "周", "徐", "蘇", "葉", "莊", "呂", "江", "何", "蕭", "羅", "高", "潘", "簡",
    "朱", "鍾", "彭", "游", "詹", "胡", "施", "沈", "余", "盧", "梁", "趙", "顏", "柯", "翁", "魏",
    "孫", "戴",
];
const MALE_GIVEN: &[&str] = &[
    "志明", "俊傑", "建宏", "家豪", "冠宇", "承翰", "宗翰", "柏翰", "彥廷", "冠廷", "文雄", "國華",
    "明輝", "信宏", "宇軒", "品睿", "子豪", "哲瑋", "振宇", "永昌", "金龍", "正雄", "建志", "育成",
];
const FEMALE_GIVEN: &[&str] = &[
    "淑芬", "美玲", "雅婷", "怡君", "佳穎", "欣怡", "宜蓁", "詩涵", "雅雯", "惠如", "秀英", "麗華",
    "玉珍", "美惠", "婉婷", "思妤", "品妍", "子晴", "家瑜", "郁婷", "靜怡", "佩君", "秀琴", "春美",
];
/// Foreign residents: name as on the resident certificate, and nationality.
const FOREIGN: &[(&str, &str, Sex)] = &[
    ("阮氏玉蘭", "越南", Sex::Female),
    ("陳氏秋香", "越南", Sex::Female),
    ("黎文雄", "越南", Sex::Male),
    ("蘇莉雅妮", "印尼", Sex::Female),
    ("安迪普拉沙", "印尼", Sex::Male),
    ("瑪莉亞桑托斯", "菲律賓", Sex::Female),
    ("約翰史密斯", "美國", Sex::Male),
    ("頌猜", "泰國", Sex::Male),
];
const COMPANY_WORDS: &[&str] = &[
    "宏達", "永豐", "聯華", "台新", "大同", "正隆", "光寶", "瑞昱", "鴻海", "長興", "中興", "東元",
    "美德", "新光", "裕隆", "華新", "台達", "國泰", "遠東", "統聯", "三洋", "和泰", "聖暉", "金寶",
];
const COMPANY_TRADES: &[&str] = &[
    "科技", "電子", "實業", "食品", "營造", "貿易", "物流", "精密", "生技", "資訊", "紡織", "建設",
];
const CAR_BRANDS: &[(&str, &[&str])] = &[
    ("TOYOTA", &["ALTIS", "RAV4", "YARIS"]),
    ("HONDA", &["CR-V", "FIT"]),
    ("MITSUBISHI", &["OUTLANDER", "COLT PLUS"]),
    ("SYM", &["JET SL", "DRG"]),
    ("KYMCO", &["MANY 110", "G6"]),
];
const COLORS: &[&str] = &["白", "黑", "銀", "灰", "紅", "藍"];
const DISABILITY_CATEGORIES: &[&str] = &[
    "第1類", "第2類", "第3類", "第4類", "第5類", "第6類", "第7類", "第8類",
];

/// A postal address, split the way 戶政 splits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// 縣市.
    pub county: String,
    /// 鄉鎮市區.
    pub town: String,
    /// 村里.
    pub village: String,
    /// 鄰.
    pub neighbor: u32,
    /// 路街.
    pub street: String,
    /// 巷弄號樓, e.g. `12巷3號5樓`.
    pub number: String,
}

impl Address {
    /// The one-line form: 縣市鄉鎮市區村里鄰路街門牌.
    pub fn full(&self) -> String {
        format!(
            "{}{}{}{:03}鄰{}{}",
            self.county, self.town, self.village, self.neighbor, self.street, self.number
        )
    }

    /// The one-line form without village and neighbourhood, as on bills and certificates.
    pub fn postal(&self) -> String {
        format!("{}{}{}{}", self.county, self.town, self.street, self.number)
    }
}

/// The welfare status of a whole household (社會救助法).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Welfare {
    None,
    /// 低收入戶.
    LowIncome,
    /// 中低收入戶.
    MiddleLowIncome,
}

/// A person's place in the household register (稱謂 relative to the head).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Head,
    Spouse,
    Child,
    Parent,
}

/// 身心障礙證明 severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisabilityLevel {
    Mild,
    Moderate,
    Severe,
    Profound,
}

impl DisabilityLevel {
    pub const ALL: [Self; 4] = [Self::Mild, Self::Moderate, Self::Severe, Self::Profound];

    pub fn label(self) -> &'static str {
        match self {
            Self::Mild => "輕度",
            Self::Moderate => "中度",
            Self::Severe => "重度",
            Self::Profound => "極重度",
        }
    }
}

/// A disability certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disability {
    pub level: DisabilityLevel,
    /// 障礙類別 (第1類 … 第8類).
    pub category: &'static str,
    pub assessed: Date,
}

/// A retired serviceman (榮民).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Veteran {
    pub branch: &'static str,
    pub rank: &'static str,
    pub discharged: Date,
    pub card_no: String,
}

/// A registered vehicle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vehicle {
    pub plate_no: String,
    /// 自用小客車 or 機車.
    pub car_type: &'static str,
    pub brand: &'static str,
    pub model: &'static str,
    pub cc: u32,
    pub color: &'static str,
    pub body_no: String,
    pub registered: Date,
}

impl Vehicle {
    pub fn is_motorcycle(&self) -> bool {
        self.car_type == "機車"
    }
}

/// A job: employer and monthly wage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Employment {
    /// Index into [`Population::companies`].
    pub company: usize,
    pub monthly_wage: u32,
    pub since: Date,
}

/// Land with a house on it, owned by a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealEstate {
    pub address: Address,
    /// 段小段.
    pub section: String,
    /// 地號.
    pub land_no: String,
    /// 建號.
    pub building_no: String,
    pub house_tax_no: String,
    pub land_area_sqm: u32,
    pub building_area_sqm: u32,
    pub announced_land_value: u64,
    pub acquired: Date,
    pub price: u64,
}

/// One synthetic natural person.
#[derive(Debug, Clone)]
pub struct Person {
    pub index: usize,
    pub id: IdNumber,
    pub name: String,
    pub sex: Sex,
    pub birth_date: Date,
    /// 健保卡號, 12 digits.
    pub nhi_card_no: String,
    /// Index into [`Population::households`]; foreign residents have no household register.
    pub household: Option<usize>,
    pub role: Role,
    /// Where the person lives (the household's address for registered persons).
    pub address: Address,
    /// 國民身分證 issue date; none under 14 and for foreign residents.
    pub id_card_issued: Option<Date>,
    pub email: String,
    pub mobile: String,
    pub father: Option<usize>,
    pub mother: Option<usize>,
    pub spouse: Option<usize>,
    pub children: Vec<usize>,
    /// Nationality of a foreign resident.
    pub nationality: Option<&'static str>,
    pub disability: Option<Disability>,
    pub veteran: Option<Veteran>,
    pub employment: Option<Employment>,
    pub vehicles: Vec<Vehicle>,
    pub real_estate: Option<RealEstate>,
    /// Savings; kept modest for welfare households (社會救助法 property limits).
    pub savings: u64,
    pub farmer: bool,
    pub education: &'static str,
}

impl Person {
    pub fn age_on(&self, date: Date) -> i32 {
        self.birth_date.age_on(date)
    }
    pub fn is_foreign(&self) -> bool {
        self.nationality.is_some()
    }
}

/// Persons sharing one 戶號 and address.
#[derive(Debug, Clone)]
pub struct Household {
    pub index: usize,
    /// 戶號: one letter and 7 digits, e.g. `E1475134`.
    pub number: String,
    pub address: Address,
    pub head: usize,
    pub members: Vec<usize>,
    pub welfare: Welfare,
    /// 最低生活費 of the county (per person per month).
    pub min_living_cost: u32,
    pub moved_in: Date,
    /// When the welfare status was approved (for #59).
    pub welfare_approved: Date,
}

/// One synthetic company.
#[derive(Debug, Clone)]
pub struct Company {
    pub index: usize,
    pub ban: BusinessId,
    pub name: String,
    /// Index of the 代表人 in [`Population::persons`].
    pub representative: usize,
    /// Further directors and supervisors (person indexes).
    pub directors: Vec<usize>,
    pub address: Address,
    pub capital: u64,
    pub org_type: &'static str,
    pub established: Date,
    /// 勞保投保單位代號.
    pub insurance_unit_no: String,
}

/// The whole synthetic population.
#[derive(Debug, Clone)]
pub struct Population {
    seed: u64,
    reference_date: Date,
    persons: Vec<Person>,
    households: Vec<Household>,
    companies: Vec<Company>,
    by_id: HashMap<String, usize>,
    by_ban: HashMap<String, usize>,
}

/// Draws one element of a non-empty constant list.
fn pick<'a, T>(rng: &mut ChaCha20Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn pick_str(rng: &mut ChaCha20Rng, items: &[&'static str]) -> &'static str {
    items[rng.random_range(0..items.len())]
}

fn digits(rng: &mut ChaCha20Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

fn upper(rng: &mut ChaCha20Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'A' + rng.random_range(0..26u8)))
        .collect()
}

/// Builds persons one by one, keeping IDs and numbers unique.
struct Builder {
    rng: ChaCha20Rng,
    reference: Date,
    persons: Vec<Person>,
    households: Vec<Household>,
    used_ids: HashSet<String>,
    used_numbers: HashSet<String>,
}

impl Builder {
    fn unique(&mut self, make: impl Fn(&mut ChaCha20Rng) -> String) -> String {
        loop {
            let s = make(&mut self.rng);
            if self.used_numbers.insert(s.clone()) {
                return s;
            }
        }
    }

    fn birth_for_age(&mut self, age: i32) -> Date {
        // A birthday in the year before the reference date's anniversary, so the age is exact.
        let start = self.reference.add_years(-age - 1).add_days(1);
        start
            .add_days(self.rng.random_range(0..365))
            .min(self.reference)
    }

    fn address(&mut self, county: &County) -> Address {
        let (town, villages, streets) = *pick(&mut self.rng, county.towns);
        let lane = if self.rng.random_bool(0.4) {
            format!("{}巷", self.rng.random_range(1..200))
        } else {
            String::new()
        };
        let floor = if self.rng.random_bool(0.5) {
            format!("{}樓", self.rng.random_range(2..15))
        } else {
            String::new()
        };
        Address {
            county: county.name.to_owned(),
            town: town.to_owned(),
            village: (*pick(&mut self.rng, villages)).to_owned(),
            neighbor: self.rng.random_range(1..30),
            street: (*pick(&mut self.rng, streets)).to_owned(),
            number: format!("{lane}{}號{floor}", self.rng.random_range(1..400)),
        }
    }

    fn id_for(&mut self, letter: char, sex: Sex, foreign: bool) -> IdNumber {
        loop {
            let serial = self.rng.random_range(0..10_000_000);
            let made = if foreign {
                IdNumber::generate_resident(letter, sex, serial)
            } else {
                IdNumber::generate(letter, sex, serial)
            };
            // Written without a let chain: the workspace declares rust-version 1.85.
            if let Ok(id) = made
                && self.used_ids.insert(id.as_str().to_owned())
            {
                return id;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn person(
        &mut self,
        surname: &str,
        sex: Sex,
        age: i32,
        letter: char,
        household: Option<usize>,
        role: Role,
        address: Address,
        foreign: Option<(&'static str, &'static str)>,
    ) -> usize {
        let index = self.persons.len();
        let id = self.id_for(letter, sex, foreign.is_some());
        let name = match foreign {
            Some((name, _)) => name.to_owned(),
            None => {
                let given = match sex {
                    Sex::Male => pick(&mut self.rng, MALE_GIVEN),
                    Sex::Female => pick(&mut self.rng, FEMALE_GIVEN),
                };
                format!("{surname}{given}")
            }
        };
        let birth_date = self.birth_for_age(age);
        let nhi_card_no = self.unique(|r| format!("0000{}", digits(r, 8)));
        let mobile = self.unique(|r| format!("09{}", digits(r, 8)));
        // ID cards are compulsory from 14 (children under 14 have none here), reissued within 20 years.
        let earliest = birth_date.add_years(14).max(self.reference.add_years(-20));
        let span = self.reference.to_days() - earliest.to_days();
        let id_card_issued = (span >= 0 && foreign.is_none())
            .then(|| earliest.add_days(self.rng.random_range(0..=span)));
        let education = match age {
            0..=6 => "學前",
            7..=12 => "國小肄業",
            13..=15 => "國中肄業",
            16..=18 => "高中肄業",
            _ => *pick(
                &mut self.rng,
                &["國中畢業", "高中畢業", "專科畢業", "大學畢業", "碩士畢業"],
            ),
        };
        self.persons.push(Person {
            index,
            id,
            name,
            sex,
            birth_date,
            nhi_card_no,
            household,
            role,
            address,
            id_card_issued,
            email: format!("user{index:04}@mail.example.tw"),
            mobile,
            father: None,
            mother: None,
            spouse: None,
            children: Vec::new(),
            nationality: foreign.map(|(_, n)| n),
            disability: None,
            veteran: None,
            employment: None,
            vehicles: Vec::new(),
            real_estate: None,
            savings: 0,
            farmer: false,
            education,
        });
        index
    }

    fn marry(&mut self, a: usize, b: usize) {
        self.persons[a].spouse = Some(b);
        self.persons[b].spouse = Some(a);
    }

    fn parent(&mut self, parent: usize, child: usize) {
        match self.persons[parent].sex {
            Sex::Male => self.persons[child].father = Some(parent),
            Sex::Female => self.persons[child].mother = Some(parent),
        }
        self.persons[parent].children.push(child);
    }

    /// One household: a head, maybe a spouse, children and elderly parents of the head.
    fn household(&mut self, kind: u32) {
        let county = pick(&mut self.rng, COUNTIES);
        let address = self.address(county);
        let hh = self.households.len();
        let number = self.unique(|r| format!("{}{}", upper(r, 1), digits(r, 7)));
        let surname = *pick(&mut self.rng, SURNAMES);
        let letter = county.letter;
        let mut members = Vec::new();
        // kind: 0-5 family, 6 elderly couple, 7 single elderly, 8 single adult, 9 family with foreign-born spouse.
        let head_age = match kind {
            6 | 7 => self.rng.random_range(65..90),
            8 => self.rng.random_range(20..45),
            _ => self.rng.random_range(30..62),
        };
        let head_sex = if kind == 7 && self.rng.random_bool(0.5) {
            Sex::Female
        } else {
            Sex::Male
        };
        let head = self.person(
            surname,
            head_sex,
            head_age,
            letter,
            Some(hh),
            Role::Head,
            address.clone(),
            None,
        );
        members.push(head);
        if kind <= 6 || kind == 9 {
            let spouse_surname = *pick(&mut self.rng, SURNAMES);
            let age = (head_age + self.rng.random_range(-5..3)).max(20);
            let spouse = self.person(
                spouse_surname,
                Sex::Female,
                age,
                letter,
                Some(hh),
                Role::Spouse,
                address.clone(),
                None,
            );
            self.marry(head, spouse);
            members.push(spouse);
            if kind <= 5 || kind == 9 {
                let n_children = self.rng.random_range(0..4);
                for _ in 0..n_children {
                    let max_age = (age - 20).clamp(1, 30);
                    let child_age = self.rng.random_range(0..max_age);
                    let sex = if self.rng.random_bool(0.5) {
                        Sex::Male
                    } else {
                        Sex::Female
                    };
                    let child = self.person(
                        surname,
                        sex,
                        child_age,
                        letter,
                        Some(hh),
                        Role::Child,
                        address.clone(),
                        None,
                    );
                    self.parent(head, child);
                    self.parent(spouse, child);
                    members.push(child);
                }
                // Elderly parents of the head live with about one family in three.
                if kind <= 1 {
                    let father_age = (head_age + self.rng.random_range(25..32)).max(65);
                    let father = self.person(
                        surname,
                        Sex::Male,
                        father_age,
                        letter,
                        Some(hh),
                        Role::Parent,
                        address.clone(),
                        None,
                    );
                    let mother_surname = *pick(&mut self.rng, SURNAMES);
                    let mother = self.person(
                        mother_surname,
                        Sex::Female,
                        father_age - 2,
                        letter,
                        Some(hh),
                        Role::Parent,
                        address.clone(),
                        None,
                    );
                    self.marry(father, mother);
                    self.parent(father, head);
                    self.parent(mother, head);
                    members.extend([father, mother]);
                }
            }
        }
        let moved_in = self
            .reference
            .add_days(-self.rng.random_range(100..(365 * 25)));
        let welfare_approved = self.reference.add_days(-self.rng.random_range(30..700));
        self.households.push(Household {
            index: hh,
            number,
            address,
            head,
            members,
            welfare: Welfare::None,
            min_living_cost: county.min_living_cost,
            moved_in,
            welfare_approved,
        });
    }

    /// A foreign resident without household registration (so no 戶政 records).
    fn foreign_resident(&mut self, i: usize) {
        let county = pick(&mut self.rng, COUNTIES);
        let address = self.address(county);
        let (name, nationality, sex) = FOREIGN[i % FOREIGN.len()];
        let age = self.rng.random_range(22..50);
        self.person(
            "",
            sex,
            age,
            county.letter,
            None,
            Role::Head,
            address,
            Some((name, nationality)),
        );
    }
}

impl Population {
    /// Generates the population for `seed`; `reference_date` is "today" for ages and record dates.
    pub fn generate(seed: u64, reference_date: Date) -> Self {
        let mut b = Builder {
            rng: ChaCha20Rng::seed_from_u64(seed),
            reference: reference_date,
            persons: Vec::new(),
            households: Vec::new(),
            used_ids: HashSet::new(),
            used_numbers: HashSet::new(),
        };
        let mut k = 0;
        while b.persons.len() < MIN_PERSONS {
            b.household(k % 10);
            k += 1;
        }
        for i in 0..6 {
            b.foreign_resident(i);
        }
        let companies = Self::make_companies(&mut b);
        let mut pop = Self {
            seed,
            reference_date,
            persons: b.persons,
            households: b.households,
            companies,
            by_id: HashMap::new(),
            by_ban: HashMap::new(),
        };
        let mut rng = b.rng;
        pop.assign_statuses(&mut rng);
        pop.by_id = pop
            .persons
            .iter()
            .map(|p| (p.id.as_str().to_owned(), p.index))
            .collect();
        pop.by_ban = pop
            .companies
            .iter()
            .map(|c| (c.ban.as_str().to_owned(), c.index))
            .collect();
        pop
    }

    fn make_companies(b: &mut Builder) -> Vec<Company> {
        let adults: Vec<usize> = b
            .persons
            .iter()
            .filter(|p| (30..70).contains(&p.age_on(b.reference)) && !p.is_foreign())
            .map(|p| p.index)
            .collect();
        let mut used_bans = HashSet::new();
        let mut out = Vec::new();
        for index in 0..COMPANIES {
            let ban = loop {
                if let Ok(ban) = BusinessId::generate(b.rng.random_range(0..10_000_000))
                    && used_bans.insert(ban.as_str().to_owned())
                {
                    break ban;
                }
            };
            let word = COMPANY_WORDS[index % COMPANY_WORDS.len()];
            let trade = *pick(&mut b.rng, COMPANY_TRADES);
            let org_type = if b.rng.random_bool(0.6) {
                "股份有限公司"
            } else {
                "有限公司"
            };
            // Adults are numerous (well over 24), so representatives are distinct persons.
            let representative = adults[(index * 7) % adults.len()];
            let directors = vec![adults[(index * 7 + 3) % adults.len()]];
            let county = pick(&mut b.rng, COUNTIES);
            let address = b.address(county);
            out.push(Company {
                index,
                ban,
                name: format!("{word}{trade}{org_type}"),
                representative,
                directors,
                address,
                capital: u64::from(b.rng.random_range(5..500u32)) * 1_000_000,
                org_type,
                established: b.reference.add_days(-b.rng.random_range(400..(365 * 40))),
                insurance_unit_no: format!("0{}", digits(&mut b.rng, 7)),
            });
        }
        out
    }

    /// Welfare, disability, veterans, jobs, vehicles and property, decided after everyone exists.
    fn assign_statuses(&mut self, rng: &mut ChaCha20Rng) {
        let today = self.reference_date;
        // Welfare: a few multi-member households of each kind (every member is flagged via the household).
        let multi: Vec<usize> = self
            .households
            .iter()
            .filter(|h| h.members.len() >= 2)
            .map(|h| h.index)
            .collect();
        for (n, &h) in multi.iter().enumerate() {
            self.households[h].welfare = match n % 9 {
                2 => Welfare::LowIncome,
                5 => Welfare::MiddleLowIncome,
                _ => Welfare::None,
            };
        }
        let n_companies = self.companies.len();
        let mut disabled = 0usize;
        for i in 0..self.persons.len() {
            let age = self.persons[i].age_on(today);
            let welfare = self.welfare_of(i);
            let poor = welfare != Welfare::None;
            // Disability: about one person in twelve, levels cycled so all four appear.
            if i % 12 == 5 {
                let level = DisabilityLevel::ALL[disabled % 4];
                disabled += 1;
                let assessed = today.add_days(-rng.random_range(30..1500));
                self.persons[i].disability = Some(Disability {
                    level,
                    category: pick_str(rng, DISABILITY_CATEGORIES),
                    assessed,
                });
            }
            // Veterans: most men of 70 or more served long enough to be 榮民.
            if self.persons[i].sex == Sex::Male
                && age >= 70
                && !self.persons[i].is_foreign()
                && i % 3 != 0
            {
                let discharged = self.persons[i]
                    .birth_date
                    .add_years(rng.random_range(40..55));
                self.persons[i].veteran = Some(Veteran {
                    branch: pick_str(rng, &["陸軍", "海軍", "空軍", "憲兵", "海軍陸戰隊"]),
                    rank: pick_str(rng, &["上士", "士官長", "中尉", "上尉", "少校", "中校"]),
                    discharged,
                    card_no: format!("{}", 10_000_000 + i * 7919),
                });
            }
            // Work: adults of working age, most of them; welfare households earn little.
            let disability_severe = self.persons[i].disability.as_ref().is_some_and(|d| {
                matches!(d.level, DisabilityLevel::Severe | DisabilityLevel::Profound)
            });
            if (20..65).contains(&age)
                && !disability_severe
                && rng.random_bool(0.8)
                && n_companies > 0
            {
                let monthly_wage = match welfare {
                    Welfare::LowIncome => 0,
                    Welfare::MiddleLowIncome => 11_000,
                    Welfare::None => rng.random_range(29..120u32) * 1_000,
                };
                if monthly_wage > 0 {
                    self.persons[i].employment = Some(Employment {
                        company: rng.random_range(0..n_companies),
                        monthly_wage,
                        since: today.add_days(-rng.random_range(60..(365 * 15))),
                    });
                }
            }
            // Vehicles: adults, not in low-income households.
            if (20..80).contains(&age) && !poor && rng.random_bool(0.45) {
                let count = rng.random_range(1..3);
                for _ in 0..count {
                    let motorcycle = rng.random_bool(0.4);
                    let (brand, models) = if motorcycle {
                        *pick(rng, &CAR_BRANDS[3..])
                    } else {
                        *pick(rng, &CAR_BRANDS[..3])
                    };
                    let plate_no = if motorcycle {
                        format!("{}-{}", upper(rng, 3), digits(rng, 3))
                    } else {
                        format!("{}-{}", upper(rng, 3), digits(rng, 4))
                    };
                    self.persons[i].vehicles.push(Vehicle {
                        plate_no,
                        car_type: if motorcycle {
                            "機車"
                        } else {
                            "自用小客車"
                        },
                        brand,
                        model: pick_str(rng, models),
                        cc: if motorcycle {
                            125
                        } else {
                            *pick(rng, &[1500u32, 1800, 1998, 2487])
                        },
                        color: pick_str(rng, COLORS),
                        body_no: upper(rng, 3) + &digits(rng, 14),
                        registered: today.add_days(-rng.random_range(30..(365 * 12))),
                    });
                }
            }
            // Savings and real estate: heads of non-welfare households often own their home.
            self.persons[i].savings = if poor {
                u64::from(rng.random_range(0..40u32)) * 1_000
            } else if age >= 20 {
                u64::from(rng.random_range(10..3_000u32)) * 1_000
            } else {
                0
            };
            if self.persons[i].role == Role::Head
                && !poor
                && self.persons[i].household.is_some()
                && rng.random_bool(0.6)
            {
                let address = self.persons[i].address.clone();
                let area = rng.random_range(30..200u32);
                self.persons[i].real_estate = Some(RealEstate {
                    section: format!(
                        "{}段{}小段",
                        pick(rng, &["仁愛", "信義", "中正", "民生", "復興"]),
                        rng.random_range(1..6)
                    ),
                    land_no: format!(
                        "{:04}-{:04}",
                        rng.random_range(1..2000),
                        rng.random_range(0..100)
                    ),
                    building_no: format!("{:05}-{:03}", rng.random_range(1..9000), 0),
                    house_tax_no: digits(rng, 12),
                    land_area_sqm: area / 3 + 10,
                    building_area_sqm: area,
                    announced_land_value: u64::from(rng.random_range(20..400u32)) * 1_000,
                    acquired: today.add_days(-rng.random_range(200..(365 * 30))),
                    price: u64::from(rng.random_range(300..3_000u32)) * 10_000,
                    address,
                });
            }
            self.persons[i].farmer = age >= 55 && !poor && i % 7 == 3;
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }
    pub fn reference_date(&self) -> Date {
        self.reference_date
    }
    pub fn persons(&self) -> &[Person] {
        &self.persons
    }
    pub fn households(&self) -> &[Household] {
        &self.households
    }
    pub fn companies(&self) -> &[Company] {
        &self.companies
    }
    pub fn person(&self, index: usize) -> Option<&Person> {
        self.persons.get(index)
    }
    pub fn household(&self, index: usize) -> Option<&Household> {
        self.households.get(index)
    }
    pub fn company(&self, index: usize) -> Option<&Company> {
        self.companies.get(index)
    }

    /// The person with this ID number, if any.
    pub fn find(&self, id: &IdNumber) -> Option<&Person> {
        self.by_id
            .get(id.as_str())
            .and_then(|&i| self.persons.get(i))
    }

    /// The company with this 統一編號, if any.
    pub fn find_company(&self, ban: &BusinessId) -> Option<&Company> {
        self.by_ban
            .get(ban.as_str())
            .and_then(|&i| self.companies.get(i))
    }

    /// The welfare status of a person's household (`None` without household).
    pub fn welfare_of(&self, person: usize) -> Welfare {
        self.persons
            .get(person)
            .and_then(|p| p.household)
            .and_then(|h| self.households.get(h))
            .map_or(Welfare::None, |h| h.welfare)
    }

    /// The person's household, if registered.
    pub fn household_of(&self, person: &Person) -> Option<&Household> {
        person.household.and_then(|h| self.households.get(h))
    }

    /// Companies in which the person is representative or director.
    pub fn offices_of(&self, person: usize) -> Vec<(&Company, bool)> {
        self.companies
            .iter()
            .filter_map(|c| {
                if c.representative == person {
                    Some((c, true))
                } else if c.directors.contains(&person) {
                    Some((c, false))
                } else {
                    None
                }
            })
            .collect()
    }
}
