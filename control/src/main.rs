fn main() {
    eprintln!("loupectl: the control socket is not implemented yet");
    std::process::exit(2);
}
